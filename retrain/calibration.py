"""Probability calibration, calibration error and a stored confidence threshold (classification only).

Scores follow retrain/metrics.py: binary 1-D P(positive), multiclass (n, k) probabilities. A
`Calibrator` is plain numbers (isotonic thresholds or Platt coefficients per class), so it is saved as
JSON next to the model and applied at serving time without unpickling anything.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from retrain.config import CalibrationGate, ConfidenceGate
from retrain.errors import ConfigError
from retrain.gates import GateResult, skipped

logger = logging.getLogger(__name__)

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


def _check_task(task: str, what: str) -> None:
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


def _reliability(y: np.ndarray, scores: np.ndarray, task: str, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: row count, mean predicted value, observed value (see expected_calibration_error)."""
    if task == "binary":
        predicted = np.asarray(scores, dtype=float).reshape(-1)
        observed = np.asarray(y, dtype=float)
    else:
        predicted, classes = top_confidence(scores, task)
        observed = (classes == np.asarray(y)).astype(float)
    index = np.clip(np.floor(predicted * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(index, weights=predicted, minlength=bins) / counts
        mean_obs = np.bincount(index, weights=observed, minlength=bins) / counts
    return counts, mean_pred, mean_obs


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, task: str, bins: int = 10) -> float:
    """Weighted mean |predicted - observed| over `bins` equal-width bins of [0, 1].

    Binary: bins on P(positive), observed = the positive rate in the bin. Multiclass: bins on the
    top-class confidence, observed = the accuracy of the top class in the bin. NaN for non-finite scores.
    """
    _check_task(task, "expected calibration error")
    values = np.asarray(scores, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return math.nan
    counts, mean_pred, mean_obs = _reliability(y, values, task, bins)
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(mean_pred[used] - mean_obs[used])) / counts.sum())


def brier_score(y: np.ndarray, scores: np.ndarray, task: str) -> float:
    """Binary: mean (p - y)^2; multiclass: mean over rows of the sum over classes of (p_k - [y = k])^2."""
    _check_task(task, "Brier score")
    values = np.asarray(scores, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return math.nan
    target = np.asarray(y)
    if task == "binary":
        return float(np.mean((values.reshape(-1) - target.astype(float)) ** 2))
    onehot = np.zeros_like(values)
    onehot[np.arange(len(target)), target.astype(np.int64)] = 1.0
    return float(np.mean(np.sum((values - onehot) ** 2, axis=1)))


def calibration_gate(y: np.ndarray, scores: np.ndarray, *, task: str, cfg: CalibrationGate) -> GateResult:
    """ECE <= max_ece and (if set) Brier <= max_brier on the (already calibrated) test scores."""
    name = "calibration"
    if task not in ("binary", "multiclass"):
        return skipped(name, f"calibration applies to classification; dataset.task is {task!r}")
    if not cfg.enabled:
        return skipped(name, "disabled in evaluate.gates.calibration")
    ece = expected_calibration_error(y, scores, task, cfg.bins)
    brier = brier_score(y, scores, task)
    details: dict[str, Any] = {
        "ece": _json_float(ece),
        "brier": _json_float(brier),
        "method": cfg.method,
        "bins": cfg.bins,
        "binned_on": "P(positive) vs positive rate" if task == "binary" else "top-class confidence vs accuracy",
        "max_ece": cfg.max_ece,
        "max_brier": cfg.max_brier,
    }
    if not (math.isfinite(ece) and math.isfinite(brier)):
        reason = "calibration: scores are empty or not finite; ECE and Brier are undefined"
        return GateResult(name, None, cfg.max_ece, False, reason, "ece", "lower_is_better", details)
    counts, mean_pred, mean_obs = _reliability(y, scores, task, cfg.bins)
    table = [
        {
            "bin": f"[{i / cfg.bins:.2f}, {(i + 1) / cfg.bins:.2f}{']' if i == cfg.bins - 1 else ')'}",
            "rows": int(counts[i]),
            "mean_predicted": round(float(mean_pred[i]), 6),
            "observed": round(float(mean_obs[i]), 6),
        }
        for i in range(cfg.bins)
        if counts[i] > 0
    ]
    details["reliability"] = table
    worst = max(table, key=lambda b: b["rows"] * abs(b["mean_predicted"] - b["observed"]))
    ece_ok = ece <= cfg.max_ece
    brier_ok = cfg.max_brier is None or brier <= cfg.max_brier
    passed = ece_ok and brier_ok
    brier_bound = "no bound" if cfg.max_brier is None else f"{'<=' if brier_ok else '>'} max {cfg.max_brier}"
    method = f"{cfg.method}-calibrated" if cfg.method else "uncalibrated"
    reason = (
        f"{method} ECE {ece:.4f} {'<=' if ece_ok else '>'} max {cfg.max_ece}, Brier {brier:.4f} {brier_bound}; "
        f"worst bin {worst['bin']}: mean predicted {worst['mean_predicted']:.3f} vs observed "
        f"{worst['observed']:.3f} on {worst['rows']} rows"
    )
    return GateResult(name, ece, cfg.max_ece, passed, reason, "ece", "lower_is_better", details)


def top_confidence(scores: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, predicted class): binary max(p, 1 - p) and p >= 0.5; multiclass max and argmax."""
    _check_task(task, "a confidence threshold")
    values = np.asarray(scores, dtype=float)
    if task == "binary":
        p = values.reshape(-1)
        return np.maximum(p, 1.0 - p), (p >= 0.5).astype(np.int64)
    return values.max(axis=1), values.argmax(axis=1).astype(np.int64)


def choose_threshold(y_valid: np.ndarray, scores_valid: np.ndarray, *, task: str, cfg: ConfidenceGate) -> float:
    """The confidence threshold chosen on validation for the configured target.

    target_precision: the lowest candidate confidence whose kept rows (confidence >= it) reach that
    accuracy (1.0, with a warning, if none does). target_coverage: the confidence keeping that share.
    """
    if task not in ("binary", "multiclass"):
        raise ConfigError(f"evaluate.gates.confidence applies to classification only; dataset.task is {task!r}")
    if (cfg.target_precision is None) == (cfg.target_coverage is None):
        raise ConfigError("evaluate.gates.confidence: set exactly one of target_precision and target_coverage")
    confidence, predicted = top_confidence(scores_valid, task)
    if len(confidence) == 0 or not np.all(np.isfinite(confidence)):
        raise ValueError("choose_threshold needs non-empty finite validation scores")
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    correct = (predicted == np.asarray(y_valid).astype(np.int64))[order]
    if cfg.target_coverage is not None:
        keep = max(1, math.ceil(cfg.target_coverage * len(conf_sorted) - 1e-9))
        return float(conf_sorted[keep - 1])
    # kept set for threshold t = every row with confidence >= t: evaluate at the last row of each tie group
    last_of_group = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    reaching = np.flatnonzero(last_of_group & (precision >= cfg.target_precision))
    if len(reaching) == 0:
        logger.warning(
            "confidence: no threshold reaches precision %.4f on %d validation rows (best %.4f); threshold 1.0",
            cfg.target_precision,
            len(conf_sorted),
            float(precision[last_of_group].max()),
        )
        return 1.0
    return float(conf_sorted[reaching[-1]])


def confidence_gate(
    y: np.ndarray, scores: np.ndarray, threshold: float, *, task: str, cfg: ConfidenceGate
) -> GateResult:
    """Coverage (share with confidence >= threshold) and precision (accuracy on them) on test, bounded."""
    name = "confidence"
    if task not in ("binary", "multiclass"):
        return skipped(name, f"confidence applies to classification; dataset.task is {task!r}")
    if not cfg.enabled:
        return skipped(name, "disabled in evaluate.gates.confidence")
    confidence, predicted = top_confidence(scores, task)
    target = np.asarray(y).astype(np.int64)
    kept = confidence >= threshold
    n_kept = int(kept.sum())
    coverage = n_kept / len(confidence) if len(confidence) else 0.0
    precision = float(np.mean(predicted[kept] == target[kept])) if n_kept else math.nan
    details: dict[str, Any] = {
        "threshold": float(threshold),
        "coverage": coverage,
        "precision": _json_float(precision),
        "rows": len(confidence),
        "kept_rows": n_kept,
        "min_coverage": cfg.min_coverage,
        "min_precision": cfg.min_precision,
        "target_precision": cfg.target_precision,
        "target_coverage": cfg.target_coverage,
    }
    if n_kept == 0:
        reason = (
            f"no test row has confidence >= threshold {threshold:.4f} (coverage 0 of {len(confidence)} rows): "
            f"precision undefined; lower the target or recalibrate"
        )
        return GateResult(name, None, cfg.min_precision, False, reason, "precision", "higher_is_better", details)
    per_class = {
        int(c): float(np.mean(target[kept & (predicted == c)] == c)) for c in np.unique(predicted[kept]).tolist()
    }
    details["precision_by_predicted_class"] = per_class
    worst_class = min(per_class, key=lambda c: per_class[c])
    cov_ok = coverage >= cfg.min_coverage
    prec_ok = precision >= cfg.min_precision
    reason = (
        f"threshold {threshold:.4f}: coverage {coverage:.4f} {'>=' if cov_ok else '<'} min {cfg.min_coverage}, "
        f"precision {precision:.4f} {'>=' if prec_ok else '<'} min {cfg.min_precision} on {n_kept} kept rows; "
        f"worst predicted class {worst_class} precision {per_class[worst_class]:.4f}"
    )
    return GateResult(
        name, precision, cfg.min_precision, cov_ok and prec_ok, reason, "precision", "higher_is_better", details
    )


def _json_float(value: float) -> float | None:
    """None for NaN/inf, so gate records stay valid JSON."""
    return float(value) if math.isfinite(value) else None
