"""Given training labels, baselines are fitted, JSON round-trip, and score as chance does."""

from __future__ import annotations

import numpy as np
import pytest

from retrain.baselines import fit_baselines, from_dict
from retrain.metrics import encode_labels, score


def test_baselines_round_trip_and_rescore_identically() -> None:
    y = np.array([0, 0, 0, 1] * 50)
    for baseline in fit_baselines(y, ("most_frequent", "stratified", "uniform"), seed=5):
        again = from_dict(baseline.to_dict())
        assert np.array_equal(baseline.predict_scores(40), again.predict_scores(40)), baseline.strategy


def test_baselines_are_near_chance() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.25).astype(int)
    fitted = {b.strategy: b for b in fit_baselines(y, ("most_frequent", "stratified", "uniform"), seed=1)}
    assert score("roc_auc", y, fitted["most_frequent"].predict_scores(len(y))) == 0.5
    for name in ("stratified", "uniform"):
        assert abs(score("roc_auc", y, fitted[name].predict_scores(len(y))) - 0.5) < 0.05, name


def test_nan_scores_give_nan_metric() -> None:
    assert np.isnan(score("roc_auc", np.array([0, 1]), np.array([np.nan, 0.5])))


def test_encode_labels() -> None:
    assert encode_labels(["a", "b", "a"], "a").tolist() == [1, 0, 1]


def test_unknown_strategy_fails() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baselines(np.array([0, 1]), ("psychic",), seed=0)[0].predict_scores(2)
