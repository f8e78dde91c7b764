"""Metric functions by name, so params choose the metric and every stage scores the same way."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

MetricFn = Callable[[np.ndarray, np.ndarray], float]

METRICS: dict[str, MetricFn] = {"roc_auc": lambda y, p: float(roc_auc_score(y, p))}


def score(metric: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """The named metric of positive-class scores; NaN scores give NaN, never a silent number."""
    if not np.all(np.isfinite(scores)):
        return math.nan
    return METRICS[metric](np.asarray(y_true), np.asarray(scores))


def encode_labels(labels: np.ndarray | list[str], positive: str) -> np.ndarray:
    """0/1 targets from label strings."""
    return (np.asarray(labels, dtype=object) == positive).astype(np.int8)
