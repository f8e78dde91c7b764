"""Probability calibration, calibration error and a stored confidence threshold (classification only).

Scores follow retrain/metrics.py: binary 1-D P(positive), multiclass (n, k) probabilities. A
`Calibrator` is plain numbers (isotonic thresholds or Platt coefficients per class), so it is saved as
JSON next to the model and applied at serving time without unpickling anything.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve

from retrain.config import CalibrationGate, ConfidenceGate
from retrain.errors import ConfigError
from retrain.evaluation.gates import GateResult, skipped
from retrain.models.calibrator import check_task

logger = logging.getLogger(__name__)


def reliability_bins(hit: np.ndarray, predicted: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of [0, 1]: row count, mean predicted value, observed rate (NaN means for empty bins).

    The means are sklearn.calibration.calibration_curve(strategy="uniform"): bins are right-closed,
    [0, 1/bins], (1/bins, 2/bins], ..., ((bins-1)/bins, 1]. calibration_curve returns the non-empty bins only
    and no counts, so the counts use its bin assignment (searchsorted on the interior edges); predicted
    values are clipped to [0, 1] first (calibration_curve refuses anything outside).
    """
    predicted = np.clip(np.asarray(predicted, dtype=float).reshape(-1), 0.0, 1.0)
    hit = np.asarray(hit).reshape(-1).astype(np.int64)
    counts = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], predicted), minlength=bins)
    mean_pred, mean_obs = np.full(bins, np.nan), np.full(bins, np.nan)
    if len(predicted):
        observed, expected = calibration_curve(hit, predicted, n_bins=bins, strategy="uniform")
        used = counts > 0
        if int(used.sum()) != len(expected):
            raise RuntimeError(f"calibration_curve returned {len(expected)} bins, {int(used.sum())} are non-empty")
        mean_pred[used], mean_obs[used] = expected, observed
    return counts.astype(float), mean_pred, mean_obs


def bin_label(i: int, bins: int) -> str:
    """The interval of bin `i` of `bins` as reliability_bins (calibration_curve) closes it: [0, a], then (a, b]."""
    return f"{'[' if i == 0 else '('}{i / bins:.2f}, {(i + 1) / bins:.2f}]"


def _reliability(y: np.ndarray, scores: np.ndarray, task: str, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """reliability_bins of the task: binary P(positive) vs label, multiclass top-class confidence vs accuracy."""
    if task == "binary":
        return reliability_bins(np.asarray(y), np.asarray(scores, dtype=float).reshape(-1), bins)
    confidence, classes = top_confidence(scores, task)
    return reliability_bins(classes == np.asarray(y), confidence, bins)


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, task: str, bins: int = 10) -> float:
    """Weighted mean |predicted - observed| over `bins` equal-width bins of [0, 1] (see reliability_bins).

    Binary: bins on P(positive), observed = the positive rate in the bin. Multiclass: bins on the
    top-class confidence, observed = the accuracy of the top class in the bin. NaN for non-finite scores.
    """
    check_task(task, "expected calibration error")
    values = np.asarray(scores, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return math.nan
    counts, mean_pred, mean_obs = _reliability(y, values, task, bins)
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(mean_pred[used] - mean_obs[used])) / counts.sum())


def brier_score(y: np.ndarray, scores: np.ndarray, task: str) -> float:
    """Binary: mean (p - y)^2; multiclass: mean over rows of the sum over classes of (p_k - [y = k])^2."""
    check_task(task, "Brier score")
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
            "bin": bin_label(i, cfg.bins),
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
    check_task(task, "a confidence threshold")
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
