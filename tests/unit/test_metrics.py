"""Given a task, metrics have a direction, take scores in the task's shape, and never hide NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrain.config import TASK_METRICS, DatasetConfig
from retrain.errors import DataError
from retrain.metrics import METRICS, class_labels, encode_target, get_metric, is_better, score

LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}


def dataset(task: str, **extra: object) -> DatasetConfig:
    base: dict[str, object] = {"name": "t", "task": task, "target": "y"}
    if task == "binary":
        base |= {"labels": ["no", "yes"], "positive_label": "yes"}
    if task == "multiclass":
        base |= {"labels": ["b", "a", "c"]}
    return DatasetConfig.model_validate(base | extra)


def perfect_and_poor(task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets, near-perfect scores and uninformative scores in the task's shape."""
    rng = np.random.default_rng(0)
    if task == "regression":
        y = rng.normal(size=200)
        return y, y + 0.01 * rng.normal(size=200), rng.normal(size=200)
    k = 2 if task == "binary" else 3
    y = np.tile(np.arange(k), 60)
    good = np.full((len(y), k), 0.05 / (k - 1))
    good[np.arange(len(y)), y] = 0.95
    poor = rng.dirichlet(np.ones(k), size=len(y))
    return (y, good[:, 1], poor[:, 1]) if task == "binary" else (y, good, poor)


def test_every_config_metric_is_registered_with_its_tasks() -> None:
    for task, names in TASK_METRICS.items():
        for name in names:
            assert name in METRICS, f"{name} (task {task}) has no registry entry"
            assert task in METRICS[name].tasks, f"{name} is not registered for {task}"
            assert METRICS[name].greater_is_better == (name not in LOWER_IS_BETTER), f"{name} direction"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_good_scores_beat_poor_ones_in_each_metric_direction(task: str) -> None:
    y, good, poor = perfect_and_poor(task)
    for name in TASK_METRICS[task]:
        a, b = score(name, y, good), score(name, y, poor)
        assert math.isfinite(a) and math.isfinite(b), f"{name}: {a}, {b}"
        assert is_better(name, a, b) and not is_better(name, b, a), f"{name}: good {a} vs poor {b}"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scores_give_nan_for_every_metric(task: str, bad: float) -> None:
    y, good, _ = perfect_and_poor(task)
    broken = good.copy()
    broken.flat[3] = bad
    for name in TASK_METRICS[task]:
        assert math.isnan(score(name, y, broken)), f"{name} must be NaN for {bad} scores"


def test_undefined_auc_is_nan_not_an_error() -> None:
    assert math.isnan(score("roc_auc", np.zeros(5, dtype=int), np.linspace(0, 1, 5))), "one class: AUC undefined"
    proba = np.full((4, 3), 1 / 3)
    assert math.isnan(score("roc_auc_ovr", np.array([0, 1, 0, 1]), proba)), "class 2 absent: AUC undefined"


def test_nan_is_never_better() -> None:
    assert not is_better("rmse", math.nan, 1.0) and is_better("rmse", 1.0, math.nan)
    assert is_better("rmse", 1.0, 2.0) and is_better("r2", 0.9, 0.8)
    assert get_metric("rmse").direction == "lower_is_better" and get_metric("r2").optuna_direction == "maximize"


def test_encode_target_per_task() -> None:
    assert encode_target(["yes", "no", "yes"], dataset("binary")).tolist() == [1, 0, 1]
    assert encode_target(["a", "c", "b"], dataset("multiclass")).tolist() == [1, 2, 0], "index in dataset.labels"
    assert encode_target(["1.5", 2, 3.0], dataset("regression")).tolist() == [1.5, 2.0, 3.0]
    assert class_labels(dataset("binary", labels=["yes", "no"])) == ["no", "yes"], "positive label is class 1"
    assert class_labels(dataset("multiclass")) == ["b", "a", "c"]
    assert class_labels(dataset("regression")) is None


def test_encode_target_names_the_bad_values() -> None:
    with pytest.raises(DataError, match=r"target 'y'.*\['d'\].*dataset.labels"):
        encode_target(["a", "d"], dataset("multiclass"))
    with pytest.raises(DataError, match=r"target 'y'.*finite numbers.*'cheap'"):
        encode_target(["1", "cheap"], dataset("regression"))
