"""Given training targets, baselines are fitted per task, JSON round-trip, and score as chance does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrain.baselines import fit_baselines, from_dict
from retrain.metrics import encode_labels, score

STRATEGIES = {
    "binary": ("most_frequent", "stratified", "uniform"),
    "multiclass": ("most_frequent", "stratified", "uniform"),
    "regression": ("mean", "median"),
}


def targets(task: str, n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if task == "regression":
        return rng.lognormal(size=n)
    if task == "binary":
        return (rng.random(n) < 0.25).astype(int)
    return rng.choice(3, size=n, p=[0.6, 0.3, 0.1])


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_baselines_round_trip_through_json_and_rescore_identically(task: str) -> None:
    y = targets(task)
    for baseline in fit_baselines(y, STRATEGIES[task], seed=5, task=task, n_classes=3 if task == "multiclass" else 2):
        again = from_dict(json.loads(json.dumps(baseline.to_dict())))
        assert again == baseline, baseline.strategy
        assert np.array_equal(baseline.predict_scores(40), again.predict_scores(40)), baseline.strategy


def test_binary_baselines_are_near_chance() -> None:
    y = targets("binary")
    fitted = {b.strategy: b for b in fit_baselines(y, STRATEGIES["binary"], seed=1)}
    assert score("roc_auc", y, fitted["most_frequent"].predict_scores(len(y))) == 0.5
    for name in ("stratified", "uniform"):
        assert abs(score("roc_auc", y, fitted[name].predict_scores(len(y))) - 0.5) < 0.05, name


def test_multiclass_baselines_use_class_priors() -> None:
    y = targets("multiclass")
    fitted = {b.strategy: b for b in fit_baselines(y, STRATEGIES["multiclass"], seed=1, task="multiclass", n_classes=3)}
    assert np.allclose(fitted["stratified"].priors, np.bincount(y) / len(y)), "priors are the training shares"
    for name, baseline in fitted.items():
        proba = baseline.predict_scores(len(y))
        assert proba.shape == (len(y), 3) and np.allclose(proba.sum(axis=1), 1.0), name
        assert abs(score("roc_auc_ovr", y, proba) - 0.5) < 0.05, f"{name} must score as chance"
    drawn = fitted["stratified"].predict_scores(len(y)).mean(axis=0)
    assert np.allclose(drawn, fitted["stratified"].priors, atol=0.03), "stratified draws follow the priors"
    assert np.all(fitted["most_frequent"].predict_scores(5).argmax(axis=1) == 0), "class 0 is the most frequent"


def test_regression_baselines_predict_train_mean_and_median() -> None:
    y = targets("regression")
    fitted = {b.strategy: b for b in fit_baselines(y, STRATEGIES["regression"], seed=1, task="regression")}
    assert np.all(fitted["mean"].predict_scores(3) == np.mean(y))
    assert np.all(fitted["median"].predict_scores(3) == np.median(y))
    assert abs(score("r2", y, fitted["mean"].predict_scores(len(y)))) < 1e-9, "the mean scores R^2 = 0 on train"
    fresh = targets("regression", seed=9)
    assert score("mae", fresh, fitted["median"].predict_scores(len(fresh))) <= score(
        "mae", fresh, fitted["mean"].predict_scores(len(fresh))
    ), "the median minimises absolute error on skewed data"


def test_nan_scores_give_nan_metric() -> None:
    assert np.isnan(score("roc_auc", np.array([0, 1]), np.array([np.nan, 0.5])))


def test_encode_labels() -> None:
    assert encode_labels(["a", "b", "a"], "a").tolist() == [1, 0, 1]


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_unknown_strategy_fails(task: str) -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baselines(np.array([0, 1, 2]), ("psychic",), seed=0, task=task, n_classes=3)[0].predict_scores(2)
