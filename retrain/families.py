"""Which model families fit which task, and LightGBM's objective rules: config checks without importing the models.

Kept apart from retrain/models.py so a run can reject a bad `candidates` section (and a fully cached rerun can
start) without importing LightGBM or scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retrain.errors import ConfigError

FAMILY_TASKS: dict[str, tuple[str, ...]] = {
    "lightgbm": ("binary", "multiclass", "regression"),
    "hgb": ("binary", "multiclass", "regression"),
    "logreg": ("binary", "multiclass"),
    "ridge": ("regression",),
    "stacking": ("binary", "multiclass", "regression"),
}
"""Which tasks each model family can be trained for."""

OBJECTIVE_KEYS = ("objective", "app", "application", "objective_type", "loss")
"""LightGBM's names (aliases) for the objective parameter."""

LIGHTGBM_OBJECTIVES: dict[str, frozenset[str]] = {
    "binary": frozenset({"binary"}),
    "multiclass": frozenset({"multiclass", "softmax"}),
    "regression": frozenset(
        {
            "regression",
            "regression_l2",
            "l2",
            "mean_squared_error",
            "mse",
            "l2_root",
            "root_mean_squared_error",
            "rmse",
            "regression_l1",
            "l1",
            "mean_absolute_error",
            "mae",
            "huber",
            "fair",
            "poisson",
            "quantile",
            "mape",
            "mean_absolute_percentage_error",
            "gamma",
            "tweedie",
        }
    ),
}
"""LightGBM objectives that fit each task; `candidates.lightgbm.fixed.objective` outside these fails."""


def lightgbm_params(task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """LightGBM hyperparameters with the objective set by the task.

    A declared objective that contradicts the task (`objective: binary` on a regression) is a
    ConfigError naming the key, not a silent override. Binary and regression keep their objective
    (default `binary` / `regression`); multiclass leaves it to LGBMClassifier, which picks `multiclass`
    with num_class from the training labels (a fold holding two classes then still trains).
    """
    out = dict(params)
    declared = {k: out.pop(k) for k in OBJECTIVE_KEYS if k in out}
    if len(set(map(str, declared.values()))) > 1:
        raise ConfigError(f"candidates.lightgbm.fixed sets the objective twice, differently: {declared}")
    objective = next(iter(declared.values()), None)
    allowed = LIGHTGBM_OBJECTIVES[task]
    if objective is not None and str(objective) not in allowed:
        key = next(iter(declared))
        raise ConfigError(
            f"candidates.lightgbm.fixed.{key} = {objective!r} does not fit dataset.task {task!r}; "
            f"use one of {sorted(allowed)} or remove it (the task sets the objective)"
        )
    if task == "binary":
        out["objective"] = "binary"
    elif task == "regression":
        out["objective"] = str(objective or "regression")
    return out


def check_family(family: str, task: str, fixed: Mapping[str, Any] | None = None) -> None:
    """Fail early with a ConfigError when a family (or its fixed objective) cannot serve the task."""
    if family not in FAMILY_TASKS:
        raise ValueError(f"unknown model family {family!r}")
    if task not in FAMILY_TASKS[family]:
        raise ConfigError(f"candidates.families: {family!r} does not apply to dataset.task {task!r}")
    if family == "lightgbm" and fixed is not None:
        lightgbm_params(task, fixed)
