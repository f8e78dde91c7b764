"""Given a task and a split design, CV folds are stratified, shuffled, grouped or time-ordered, and the
search optimises in the metric's direction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.config import FamilyConfig, ParamRange
from retrain.errors import DataError
from retrain.tuning import make_folds, tune


def covers_every_row_once(folds: list[tuple[np.ndarray, np.ndarray]], n: int) -> bool:
    valid = np.concatenate([v for _, v in folds])
    return sorted(valid.tolist()) == list(range(n))


def test_classification_folds_are_stratified_and_seeded() -> None:
    y = np.repeat([0, 1, 2], [60, 30, 9])
    folds = make_folds(y, 3, seed=4, task="multiclass")
    assert covers_every_row_once(folds, len(y))
    for _, valid in folds:
        assert np.bincount(y[valid], minlength=3).tolist() == [20, 10, 3], "each fold keeps the class shares"
    again = make_folds(y, 3, seed=4, task="multiclass")
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True)), "same seed, same folds"


def test_rare_class_error_names_class_count_and_setting() -> None:
    y = np.repeat([0, 1, 2], [50, 50, 2])
    with pytest.raises(DataError, match=r"class 'c' has 2 training rows, fewer than candidates.cv_folds = 3"):
        make_folds(y, 3, seed=0, task="multiclass", labels=["a", "b", "c"])


def test_regression_folds_are_shuffled_kfold() -> None:
    y = np.arange(30, dtype=float)
    folds = make_folds(y, 3, seed=0, task="regression")
    assert covers_every_row_once(folds, 30) and len(folds) == 3
    contiguous = [np.array_equal(v, np.arange(v.min(), v.max() + 1)) for _, v in folds]
    assert not all(contiguous), "rows are shuffled into folds, not cut into contiguous blocks"


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_grouped_folds_never_split_a_group(task: str) -> None:
    rng = np.random.default_rng(0)
    groups = pd.Series(rng.integers(0, 12, size=240).astype(str))
    y = rng.integers(0, 2, size=240) if task == "binary" else rng.normal(size=240)
    folds = make_folds(y, 3, seed=1, task=task, groups=groups)
    assert covers_every_row_once(folds, 240)
    for train, valid in folds:
        shared = set(groups.iloc[train]) & set(groups.iloc[valid])
        assert not shared, f"groups {shared} are on both sides of a fold"


def test_fewer_groups_than_folds_is_a_data_error() -> None:
    groups = np.array(["a", "b"] * 20)
    with pytest.raises(DataError, match=r"2 distinct groups.*candidates.cv_folds = 3"):
        make_folds(np.zeros(40), 3, seed=0, task="regression", groups=groups)


def test_ordered_folds_train_on_the_past_only() -> None:
    y = np.tile([0, 1], 30)
    folds = make_folds(y, 3, seed=0, task="binary", ordered=True)
    assert len(folds) == 3
    for train, valid in folds:
        assert train.max() < valid.min(), "every training row comes before every validation row"


def test_search_minimises_a_lower_is_better_metric() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "c": pd.Series(rng.choice(["x", "y"], size=300), dtype="str")})
    y = 2 * X["a"].to_numpy() + (X["c"] == "x") + rng.normal(scale=0.3, size=300)
    cfg = FamilyConfig(space={"alpha": ParamRange(low=0.01, high=1000.0, log=True)})
    result = tune(
        "ridge",
        cfg,
        X,
        y,
        numeric=["a"],
        categorical=["c"],
        metric="rmse",
        n_trials=4,
        n_folds=3,
        seed=0,
        task="regression",
    )
    values = [t["value"] for t in result.trials]
    assert result.direction == "minimize" and result.cv_score == min(values), f"best is the lowest rmse: {values}"
