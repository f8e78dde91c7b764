"""Given training targets, baselines are fitted per task, JSON round-trip, and score as chance does."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from retrain.config import BaselinesConfig, DatasetConfig
from retrain.errors import DataError
from retrain.metrics import encode_labels, score
from retrain.models.baselines import baselines_record, families_vs_baselines, fit_baselines, from_dict, input_columns

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


def test_regression_random_draws_follow_the_training_targets() -> None:
    y = targets("regression", n=20000)
    fitted = {b.strategy: b for b in fit_baselines(y, ("stratified", "uniform"), seed=3, task="regression")}
    drawn = fitted["stratified"].predict_scores(20000)
    assert abs(np.median(drawn) - np.median(y)) < 0.05 * np.median(y), "stratified draws keep the median"
    assert abs(np.quantile(drawn, 0.9) - np.quantile(y, 0.9)) < 0.1 * np.quantile(y, 0.9), "and the tail"
    uniform = fitted["uniform"].predict_scores(1000)
    assert uniform.min() >= y.min() and uniform.max() <= y.max(), "uniform draws stay in the training range"
    assert np.array_equal(drawn, fitted["stratified"].predict_scores(20000)), "seeded: re-scoring is exact"
    assert score("r2", y, drawn) < 0, "a random draw is worse than the mean"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_heuristic_uses_per_category_shares_and_round_trips(task: str) -> None:
    rng = np.random.default_rng(0)
    column = pd.Series(rng.choice(["a", "b", "c"], size=3000))
    n_classes = 3 if task == "multiclass" else 2
    if task == "regression":
        y = np.where(column == "a", 10.0, 0.0) + rng.normal(size=3000)
    else:
        codes = {"a": n_classes - 1, "b": n_classes - 2, "c": 0}
        y = column.map(codes).to_numpy() * (rng.random(3000) < 0.9)
    (baseline,) = fit_baselines(
        y, ("heuristic",), seed=0, task=task, n_classes=n_classes, heuristic=("col", column, None)
    )
    rows = pd.DataFrame({"col": ["a", "b", "zzz", None]})
    scores = baseline.predict_scores(rows)
    again = from_dict(json.loads(json.dumps(baseline.to_dict())))
    assert np.array_equal(again.predict_scores(rows), scores), "JSON round trip re-scores identically"
    if task == "regression":
        assert scores[0] == pytest.approx(y[column == "a"].mean()), "the mean target of the category"
        assert scores[2] == pytest.approx(y.mean()) and scores[3] == pytest.approx(y.mean()), "unseen/missing: prior"
    elif task == "binary":
        assert scores[0] == pytest.approx(y[column == "a"].mean()) and scores[1] == 0.0, scores
    else:
        assert scores.shape == (4, 3) and np.allclose(scores.sum(axis=1), 1.0), scores
    full = pd.DataFrame({"col": column})
    metric = {"binary": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "r2"}[task]
    floor = 0.8 if task != "regression" else 0.9
    assert score(metric, y, baseline.predict_scores(full)) > floor, "it learns the rule"
    with pytest.raises(ValueError, match="needs column 'col'"):
        baseline.predict_scores(len(rows))


def test_heuristic_threshold_on_a_numeric_column() -> None:
    x = pd.Series(np.arange(1000, dtype=float))
    y = (x > 600).astype(int).to_numpy()
    (baseline,) = fit_baselines(y, ("heuristic",), seed=0, heuristic=("x", x, 500.0))
    scores = baseline.predict_scores(pd.DataFrame({"x": [10.0, 900.0, np.nan]}))
    assert scores[0] == 0.0 and scores[1] == pytest.approx(399 / 499), scores
    assert scores[2] == pytest.approx(y.mean()), "missing values get the training prior"


def test_families_vs_baselines_marks_who_beats_the_best_baseline() -> None:
    candidates = {"metric": "log_loss", "families": {"good": {"valid_score": 0.3}, "bad": {"valid_score": 0.5}}}
    baselines = {"valid_scores": {"most_frequent": 0.6, "heuristic": 0.45, "uniform": float("nan")}}
    verdict = families_vs_baselines(candidates, baselines)
    assert verdict["good"]["beats_baselines"] and not verdict["bad"]["beats_baselines"], verdict
    assert verdict["bad"]["best_baseline"] == "heuristic", "lower log loss is better; NaN baselines are ignored"


DATASET = DatasetConfig(
    name="t",
    task="binary",
    target="y",
    labels=("neg", "pos"),
    positive_label="pos",
    columns={"x": {"type": "float"}, "colour": {"type": "category"}},
)


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame(
        {"x": x, "colour": rng.choice(["red", "blue"], size=n), "y": np.where(x + rng.normal(size=n) > 1, "pos", "neg")}
    )


def test_baselines_record_scores_every_strategy_on_valid_and_the_heuristic_beats_chance() -> None:
    cfg = BaselinesConfig(strategies=("most_frequent", "heuristic"), heuristic={"column": "x"})
    assert input_columns(DATASET, cfg) == ["y", "x"]
    record = baselines_record(frame(3000, 0), frame(1000, 1), DATASET, cfg, "roc_auc", seed=3)
    assert record["labels"] == ["neg", "pos"] and record["direction"] == "higher_is_better", record
    assert record["valid_scores"]["most_frequent"] == pytest.approx(0.5), "a constant score has AUC 0.5"
    assert record["valid_scores"]["heuristic"] > 0.7, "x above its median is a strong rule here"
    threshold = record["baselines"][1]["threshold"]
    assert threshold == pytest.approx(float(frame(3000, 0)["x"].median())), "numeric heuristic: the train median"


def test_a_heuristic_on_a_non_feature_or_a_thresholded_category_names_the_key() -> None:
    not_feature = BaselinesConfig(strategies=("heuristic",), heuristic={"column": "zip"})
    with pytest.raises(DataError, match=r"baselines.heuristic.column 'zip' is not a feature of data/processed/train"):
        baselines_record(frame(100, 0), frame(50, 1), DATASET, not_feature, "roc_auc", 0, "data/processed/train")
    on_category = BaselinesConfig(strategies=("heuristic",), heuristic={"column": "colour", "threshold": 1.0})
    with pytest.raises(DataError, match=r"threshold 1.0 set on categorical column 'colour'"):
        baselines_record(frame(100, 0), frame(50, 1), DATASET, on_category, "roc_auc", 0)
