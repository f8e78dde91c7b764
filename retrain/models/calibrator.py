"""A fitted probability calibration map (isotonic or Platt), stored as JSON numbers beside the model.

Part of the served model: `CalibratedPredictor` applies it at scoring time without unpickling anything.
The calibration *gate* (error bounds, confidence threshold) lives in retrain/evaluation/calibration.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from retrain.errors import ConfigError

EPS = 1e-6
"""Probabilities are clipped to [EPS, 1 - EPS] before taking logits (sigmoid calibration)."""

METHODS = ("isotonic", "sigmoid")


def _per_class(scores: np.ndarray, task: str) -> np.ndarray:
    """The columns calibrated one-vs-rest: binary P(positive) as one column, multiclass every class."""
    values = np.asarray(scores, dtype=float)
    if task == "binary":
        return values.reshape(-1, 1)
    if values.ndim != 2:
        raise ValueError(f"multiclass scores must be (n, k) probabilities, got shape {values.shape}")
    return values


def _logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) on clipped probabilities, finite for 0 and 1."""
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.log(q / (1.0 - q))


def check_task(task: str, what: str) -> None:
    """Calibration and confidence are defined on probabilities: regression is a config error."""
    if task not in ("binary", "multiclass"):
        raise ConfigError(f"{what} applies to classification only; dataset.task is {task!r}: remove it")


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map as JSON-able numbers.

    `params["classes"]` holds one entry per calibrated column (binary: the positive class; multiclass:
    every class, one-vs-rest): isotonic `{"x": [...], "y": [...]}` (applied by linear interpolation,
    clipped at the ends), sigmoid `{"a": a, "b": b}` (p' = 1 / (1 + exp(-(a logit(p) + b)))).
    Multiclass rows are renormalised to sum to 1.
    """

    method: str
    task: str
    params: dict[str, Any] = field(default_factory=dict)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated scores in the same shape as the input scores."""
        columns = _per_class(scores, self.task)
        entries = self.params["classes"]
        if columns.shape[1] != len(entries):
            raise ValueError(f"calibrator fitted on {len(entries)} class columns, got scores with {columns.shape[1]}")
        out = np.empty_like(columns)
        for j, entry in enumerate(entries):
            if self.method == "isotonic":
                out[:, j] = np.interp(columns[:, j], entry["x"], entry["y"])
            else:
                out[:, j] = 1.0 / (1.0 + np.exp(-(entry["a"] * _logit(columns[:, j]) + entry["b"])))
        if self.task == "binary":
            return out[:, 0]
        total = out.sum(axis=1, keepdims=True)
        uniform = np.full_like(out, 1.0 / out.shape[1])
        return np.where(total > 0, out / np.where(total > 0, total, 1.0), uniform)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what `calibration.json` holds)."""
        return {"method": self.method, "task": self.task, "params": self.params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Inverse of `to_dict`; refuses unknown methods so a hand-edited file cannot half-apply."""
        method = str(data["method"])
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; known: {list(METHODS)}")
        entries = [{k: _floats(v) for k, v in entry.items()} for entry in data["params"]["classes"]]
        return cls(method=method, task=str(data["task"]), params={"classes": entries})


def _floats(value: Any) -> float | list[float]:
    """Numbers from JSON as Python floats (lists stay lists)."""
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Monotone map from score to observed rate, stored as its interpolation knots."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def _fit_sigmoid(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling on the score's logit; a single-class target gives the constant observed rate."""
    if len(np.unique(y)) < 2:
        rate = float(np.clip(np.mean(y), EPS, 1.0 - EPS))
        return {"a": 0.0, "b": float(math.log(rate / (1.0 - rate)))}
    logistic = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p).reshape(-1, 1), y)
    return {"a": float(logistic.coef_[0, 0]), "b": float(logistic.intercept_[0])}


def fit_calibrator(method: str, scores: np.ndarray, y: np.ndarray, task: str) -> Calibrator:
    """Fit isotonic or sigmoid calibration on held-out (validation) scores; multiclass one-vs-rest."""
    if task not in ("binary", "multiclass"):
        raise ConfigError(
            f"evaluate.gates.calibration.method = {method!r} applies to classification only; "
            f"dataset.task is {task!r}: set it to null"
        )
    if method not in METHODS:
        raise ConfigError(f"evaluate.gates.calibration.method = {method!r}; use one of {list(METHODS)}")
    columns = _per_class(scores, task)
    target = np.asarray(y).astype(np.int64)
    if len(target) != len(columns) or len(target) == 0:
        raise ValueError(f"calibration needs matching non-empty scores and labels, got {len(columns)} / {len(target)}")
    fit = _fit_isotonic if method == "isotonic" else _fit_sigmoid
    positive_of = [1] if task == "binary" else list(range(columns.shape[1]))
    entries = [fit(columns[:, j], (target == c).astype(float)) for j, c in enumerate(positive_of)]
    return Calibrator(method=method, task=task, params={"classes": entries})
