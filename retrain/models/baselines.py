"""Non-ML reference models, stored as plain JSON so they can be re-scored anywhere.

Classification: `most_frequent` (the majority class with certainty), `stratified` (random classes
drawn from the training priors) and `uniform` (random classes, equally likely). Regression: `mean`
and `median` of the training target, `stratified` (seeded draws from the training target
distribution, kept as 101 quantiles) and `uniform` (seeded draws between the training min and max).
Every task: `heuristic`, a one-column rule configured in params (`baselines.heuristic`): the class
shares (classification) or mean target (regression) per category of a categorical column, or on
either side of a threshold on a numeric one; unseen or missing values get the training prior.
Scores come in the task's shape (see retrain/metrics.py) and random strategies are seeded, so
re-scoring on test is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import BaselinesConfig, DatasetConfig
from retrain.errors import DataError
from retrain.metrics import class_labels, encode_target, get_metric, is_better, score

CLASSIFICATION_STRATEGIES = ("most_frequent", "stratified", "uniform", "heuristic")
REGRESSION_STRATEGIES = ("mean", "median", "stratified", "uniform", "heuristic")
N_QUANTILES = 101
"""Quantiles kept of the training target for regression draws (0%, 1%, ..., 100%)."""

OTHER = "(other)"
"""The heuristic's group for missing and unseen values: the training prior."""


def _group_keys(values: pd.Series, threshold: float | None) -> np.ndarray:
    """Group key per row: the category as text, or `<=` / `>` the threshold; missing -> OTHER."""
    if threshold is None:
        return values.astype("str").where(values.notna(), OTHER).to_numpy()
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    keys = np.where(numbers <= threshold, "<=", ">").astype(object)
    keys[np.isnan(numbers)] = OTHER
    return keys


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline: strategy, task, what it learnt from train (priors, a value, quantiles or groups), its seed."""

    strategy: str
    task: str
    seed: int
    priors: tuple[float, ...] = ()
    value: float | None = None
    quantiles: tuple[float, ...] = ()
    column: str | None = None
    threshold: float | None = None
    groups: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def predict_scores(self, rows: pd.DataFrame | int) -> np.ndarray:
        """Scores for the rows (a frame; an int row count will do except for `heuristic`) in the task's shape."""
        if self.strategy == "heuristic":
            if not isinstance(rows, pd.DataFrame) or self.column not in rows.columns:
                raise ValueError(f"the heuristic baseline needs column {self.column!r} of the rows to score")
            return self._heuristic(rows[self.column])
        n_rows = rows if isinstance(rows, int) else len(rows)
        rng = np.random.default_rng(self.seed)
        if self.task == "regression":
            if self.strategy in ("mean", "median"):
                return np.full(n_rows, float(self.value))  # type: ignore[arg-type]
            if self.strategy == "stratified":
                grid = np.linspace(0.0, 1.0, len(self.quantiles))
                return np.interp(rng.random(n_rows), grid, np.asarray(self.quantiles, dtype=float))
            if self.strategy == "uniform":
                return rng.uniform(self.quantiles[0], self.quantiles[-1], size=n_rows)
            raise ValueError(f"unknown baseline strategy {self.strategy!r} for regression")
        priors = np.asarray(self.priors, dtype=float)
        k = len(priors)
        if self.task == "binary":
            # kept identical to the binary-only version, so Adult baselines score as before
            if self.strategy == "most_frequent":
                return np.full(n_rows, 1.0 if priors[1] > 0.5 else 0.0)
            if self.strategy == "stratified":
                return (rng.random(n_rows) < priors[1]).astype(float)
            if self.strategy == "uniform":
                return rng.integers(0, 2, size=n_rows).astype(float)
            raise ValueError(f"unknown baseline strategy {self.strategy!r} for classification")
        if self.strategy == "most_frequent":
            classes = np.full(n_rows, int(np.argmax(priors)))
        elif self.strategy == "stratified":
            classes = rng.choice(k, size=n_rows, p=priors)
        elif self.strategy == "uniform":
            classes = rng.integers(0, k, size=n_rows)
        else:
            raise ValueError(f"unknown baseline strategy {self.strategy!r} for classification")
        return np.eye(k)[classes]

    def _heuristic(self, values: pd.Series) -> np.ndarray:
        """Per-group class shares or mean target; rows of an unseen or missing group get the prior."""
        keys = _group_keys(values, self.threshold)
        table = {key: np.asarray(v, dtype=float) for key, v in self.groups.items()}
        fallback = table[OTHER]
        out = np.stack([table.get(key, fallback) for key in keys]) if len(keys) else np.empty((0, len(fallback)))
        if self.task == "multiclass":
            return out
        return out[:, 1] if self.task == "binary" else out[:, 0]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        data = asdict(self)
        data["priors"] = list(self.priors)
        data["quantiles"] = list(self.quantiles)
        data["groups"] = {k: list(v) for k, v in self.groups.items()}
        return data


def _fit_heuristic(
    y: np.ndarray, values: pd.Series, task: str, n_classes: int, threshold: float | None
) -> dict[str, tuple[float, ...]]:
    """Class shares (or the mean target, as a 1-tuple) per group of the column, plus OTHER = the training prior."""
    keys = _group_keys(values, threshold)

    def stats(target: np.ndarray) -> tuple[float, ...]:
        if task == "regression":
            return (float(np.mean(target)),)
        counts = np.bincount(target.astype(np.int64), minlength=n_classes)[:n_classes]
        return tuple(float(c) for c in counts / max(1, counts.sum()))

    groups = {str(key): stats(y[keys == key]) for key in np.unique(keys) if key != OTHER}
    groups[OTHER] = stats(y)
    return groups


def fit_baselines(
    y_train: np.ndarray,
    strategies: Sequence[str],
    seed: int,
    *,
    task: str = "binary",
    n_classes: int = 2,
    heuristic: tuple[str, pd.Series, float | None] | None = None,
) -> list[Baseline]:
    """Fit every declared baseline on the encoded training target (class indices, or floats).

    `heuristic` is (column name, its training values, threshold or None for a categorical column);
    it is needed when `heuristic` is among the strategies.
    """
    y = np.asarray(y_train)
    if "heuristic" in strategies and heuristic is None:
        raise ValueError("the heuristic baseline needs its column's training values (baselines.heuristic)")
    fitted = []
    if task == "regression":
        stats = {"mean": float(np.mean(y)), "median": float(np.median(y))}
        quantiles = tuple(float(q) for q in np.quantile(y.astype(float), np.linspace(0.0, 1.0, N_QUANTILES)))
        for s in strategies:
            if s in ("stratified", "uniform"):
                fitted.append(Baseline(s, task, seed, quantiles=quantiles))
            elif s != "heuristic":
                fitted.append(Baseline(s, task, seed, value=stats.get(s)))
            else:
                fitted.append(_heuristic_baseline(y, task, seed, n_classes, heuristic))  # type: ignore[arg-type]
        return fitted
    counts = np.bincount(y.astype(np.int64), minlength=n_classes)[:n_classes]
    priors = tuple(float(c) for c in counts / max(1, counts.sum()))
    for s in strategies:
        if s == "heuristic":
            fitted.append(_heuristic_baseline(y, task, seed, n_classes, heuristic))  # type: ignore[arg-type]
        else:
            fitted.append(Baseline(s, task, seed, priors=priors))
    return fitted


def _heuristic_baseline(
    y: np.ndarray, task: str, seed: int, n_classes: int, spec: tuple[str, pd.Series, float | None]
) -> Baseline:
    """The one-column rule, fitted on the training rows."""
    column, values, threshold = spec
    groups = _fit_heuristic(y, values.reset_index(drop=True), task, n_classes, threshold)
    return Baseline("heuristic", task, seed, column=column, threshold=threshold, groups=groups)


def from_dict(data: dict[str, Any]) -> Baseline:
    """Rebuild a baseline from its JSON form."""
    value, threshold = data.get("value"), data.get("threshold")
    return Baseline(
        strategy=str(data["strategy"]),
        task=str(data["task"]),
        seed=int(data["seed"]),
        priors=tuple(float(p) for p in data.get("priors") or ()),
        value=None if value is None else float(value),
        quantiles=tuple(float(q) for q in data.get("quantiles") or ()),
        column=data.get("column"),
        threshold=None if threshold is None else float(threshold),
        groups={str(k): tuple(float(x) for x in v) for k, v in (data.get("groups") or {}).items()},
    )


def families_vs_baselines(candidates: dict[str, Any], baselines: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per candidate family: its valid score, the best baseline's valid score and whether it beats it.

    `candidates` is models/candidates/summary.json, `baselines` models/baselines/baselines.json; both
    are on the valid split with the same metric. "Beats" is strictly better, with no margin (the margin
    is the evaluate gate's, on test).
    """
    metric = candidates["metric"]
    scores = {k: float(v) for k, v in baselines["valid_scores"].items() if v is not None and np.isfinite(v)}
    best_name = None
    for name, value in scores.items():
        if best_name is None or is_better(metric, value, scores[best_name]):
            best_name = name
    out = {}
    for family, entry in candidates["families"].items():
        valid = entry["valid_score"]
        beats = best_name is None or bool(is_better(metric, valid, scores[best_name]))
        out[family] = {
            "valid_score": valid,
            "best_baseline": best_name,
            "best_baseline_score": None if best_name is None else scores[best_name],
            "beats_baselines": beats,
        }
    return out


def input_columns(dataset: DatasetConfig, cfg: BaselinesConfig) -> list[str]:
    """The split columns the baselines read: the target, and the heuristic's feature when it is one."""
    extra = cfg.heuristic.column if cfg.heuristic is not None and cfg.heuristic.column != dataset.target else None
    return [dataset.target, *([extra] if extra in dataset.features else [])]


def heuristic_spec(
    train: pd.DataFrame, dataset: DatasetConfig, cfg: BaselinesConfig, train_name: str = "train"
) -> tuple[str, pd.Series, float | None] | None:
    """(column, train values, threshold) of the configured heuristic; numeric without threshold: the median."""
    rule = cfg.heuristic
    if rule is None or "heuristic" not in cfg.strategies:
        return None
    if rule.column not in dataset.features:
        raise DataError(
            f"baselines: baselines.heuristic.column {rule.column!r} is not a feature of {train_name} "
            f"(features: {dataset.features})"
        )
    if rule.column in dataset.categorical:
        if rule.threshold is not None:
            raise DataError(
                f"baselines: baselines.heuristic.threshold {rule.threshold} set on categorical column {rule.column!r}"
            )
        return rule.column, train[rule.column], None
    values = pd.to_numeric(train[rule.column], errors="coerce")
    threshold = rule.threshold if rule.threshold is not None else float(values.median())
    return rule.column, train[rule.column], threshold


def baselines_record(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    dataset: DatasetConfig,
    cfg: BaselinesConfig,
    metric: str,
    seed: int,
    train_name: str = "train",
) -> dict[str, Any]:
    """Fit on train, score on valid: the record the stage writes (evaluate re-scores it on test).

    One function for the stage task and the benchmarks' plain-Python path, so both fit the same baselines.
    """
    labels = class_labels(dataset)
    fitted = fit_baselines(
        encode_target(train[dataset.target], dataset),
        cfg.strategies,
        seed,
        task=dataset.task,
        n_classes=len(labels) if labels else 0,
        heuristic=heuristic_spec(train, dataset, cfg, train_name),
    )
    y_valid = encode_target(valid[dataset.target], dataset)
    return {
        "task": dataset.task,
        "labels": labels,
        "metric": metric,
        "direction": get_metric(metric).direction,
        "baselines": [b.to_dict() for b in fitted],
        "valid_scores": {b.strategy: score(metric, y_valid, b.predict_scores(valid)) for b in fitted},
    }
