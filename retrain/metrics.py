"""Metric registry by name, with direction, so params choose the metric and every stage scores the same way.

Score shapes (what `predict_scores`, baselines and the registered pyfunc produce):

- binary: 1-D P(positive label);
- multiclass: (n, k) class probabilities, columns in `dataset.labels` order;
- regression: 1-D predictions.

Targets are encoded by `encode_target`: binary 0/1 (1 = positive label), multiclass the index in
`dataset.labels`, regression float. Non-finite scores give a NaN metric, never a silent number.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig
from retrain.errors import DataError

logger = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _sklearn(name: str) -> Callable[..., Any]:
    """`sklearn.metrics.<name>`, imported on first use: reading a metric's direction (a cached run's summary)
    must not pay for scikit-learn's import."""
    import sklearn.metrics

    return getattr(sklearn.metrics, name)


@dataclass(frozen=True)
class Metric:
    """One metric: how to compute it, for which tasks, and whether higher is better."""

    name: str
    tasks: tuple[str, ...]
    greater_is_better: bool
    fn: MetricFn

    @property
    def direction(self) -> str:
        """`higher_is_better` or `lower_is_better`, as written into gate records."""
        return "higher_is_better" if self.greater_is_better else "lower_is_better"

    @property
    def optuna_direction(self) -> str:
        """The Optuna study direction that improves this metric."""
        return "maximize" if self.greater_is_better else "minimize"


def _classes(scores: np.ndarray) -> np.ndarray:
    """Hard class predictions from probabilities (binary threshold 0.5, multiclass argmax)."""
    return (scores >= 0.5).astype(np.int64) if scores.ndim == 1 else np.argmax(scores, axis=1)


def _roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC; NaN (logged) when y holds a single class, where AUC is undefined."""
    if len(np.unique(y)) < 2:
        logger.warning("roc_auc is undefined on %d rows of a single class: NaN", len(y))
        return math.nan
    return float(_sklearn("roc_auc_score")(y, scores))


def _roc_auc_ovr(y: np.ndarray, scores: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over all k classes; NaN (logged) when a class is absent from y."""
    k = scores.shape[1]
    present = np.unique(y)
    if len(present) < k:
        logger.warning(
            "roc_auc_ovr is undefined: classes %s absent from %d rows: NaN",
            sorted(set(range(k)) - set(present)),
            len(y),
        )
        return math.nan
    return float(_sklearn("roc_auc_score")(y, scores, multi_class="ovr", average="macro", labels=list(range(k))))


def _log_loss(y: np.ndarray, scores: np.ndarray) -> float:
    """Log loss with the full label set, so a split missing a class still scores."""
    k = 2 if scores.ndim == 1 else scores.shape[1]
    return float(_sklearn("log_loss")(y, scores, labels=list(range(k))))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("roc_auc", ("binary",), True, _roc_auc),
        Metric("roc_auc_ovr", ("multiclass",), True, _roc_auc_ovr),
        Metric("log_loss", ("binary", "multiclass"), False, _log_loss),
        Metric(
            "accuracy", ("binary", "multiclass"), True, lambda y, p: float(_sklearn("accuracy_score")(y, _classes(p)))
        ),
        Metric(
            "balanced_accuracy",
            ("binary", "multiclass"),
            True,
            lambda y, p: float(_sklearn("balanced_accuracy_score")(y, _classes(p))),
        ),
        Metric("r2", ("regression",), True, lambda y, p: float(_sklearn("r2_score")(y, p))),
        Metric("rmse", ("regression",), False, lambda y, p: float(_sklearn("root_mean_squared_error")(y, p))),
        Metric("mae", ("regression",), False, lambda y, p: float(_sklearn("mean_absolute_error")(y, p))),
    )
}
"""Every metric of `retrain.config.TASK_METRICS`, with its direction."""


def get_metric(name: str) -> Metric:
    """The registered metric, or an error listing the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics are {sorted(METRICS)}") from None


def greater_is_better(name: str) -> bool:
    """Whether a higher value of the metric is better (False for losses and errors)."""
    return get_metric(name).greater_is_better


def is_better(name: str, a: float, b: float) -> bool:
    """Whether value a is strictly better than b for this metric; NaN is never better."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if greater_is_better(name) else a < b


def score(metric: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """The named metric of scores in the task's shape; non-finite scores give NaN, never a silent number."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return math.nan
    return get_metric(metric).fn(np.asarray(y_true), values)


def encode_labels(labels: np.ndarray | list[str], positive: str) -> np.ndarray:
    """0/1 targets from label strings (1 = the positive label)."""
    return (np.asarray(labels, dtype=object) == positive).astype(np.int8)


def encode_target(values: pd.Series | np.ndarray | Sequence[object], dataset: DatasetConfig) -> np.ndarray:
    """Model targets from the raw target column: 0/1, label index (in `dataset.labels`), or float.

    A label outside `dataset.labels` or a regression target that is not numeric is a DataError naming
    the column and the offending values.
    """
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    if not dataset.is_classification:
        numeric = pd.to_numeric(series, errors="coerce")
        bad = series[numeric.isna() | ~np.isfinite(numeric.astype(float))]
        if len(bad):
            raise DataError(
                f"target {dataset.target!r}: regression needs finite numbers; {len(bad)} rows are not, "
                f"e.g. {bad.head(5).tolist()}"
            )
        return numeric.to_numpy(dtype=np.float64)
    labels = list(dataset.labels or ())
    if not labels:
        raise DataError(f"target {dataset.target!r}: no label set (dataset.labels nor data/raw/schema.json)")
    text = series.astype("str").where(series.notna())
    unknown = sorted({str(v) for v in text[~text.isin(labels)]})
    if unknown:
        raise DataError(
            f"target {dataset.target!r}: values {unknown[:5]} are not in dataset.labels {labels} "
            f"({int((~text.isin(labels)).sum())} rows)"
        )
    if dataset.task == "binary":
        return encode_labels(text.to_numpy(dtype=object), str(dataset.positive_label))
    index = {label: i for i, label in enumerate(labels)}
    return text.map(index).to_numpy(dtype=np.int64)


def class_count(dataset: DatasetConfig) -> int:
    """Number of classes the scores cover (0 for regression)."""
    return len(dataset.labels or ()) if dataset.is_classification else 0


def class_labels(dataset: DatasetConfig) -> list[str] | None:
    """The label of each encoded class index: binary [negative, positive], multiclass `dataset.labels`."""
    if not dataset.is_classification:
        return None
    labels = [str(v) for v in dataset.labels or ()]
    if dataset.task == "binary":
        positive = str(dataset.positive_label)
        return [*(v for v in labels if v != positive), positive]
    return labels
