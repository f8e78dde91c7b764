"""Label leakage: a feature that alone predicts the label near-perfectly is a copy of it, not a signal.

Each feature gets a cheap single-feature model scored out of fold (2-fold, seeded), so a score can only be
high if the feature really carries the label: overfitting lowers a held-out score, it never raises it.
Numeric features use a small decision tree (NaN is a branch of its own); categorical features use the
per-category target mean (or class mix) learnt on the other fold, unseen categories get the prior.
Scores: binary ROC AUC as max(auc, 1 - auc); multiclass balanced accuracy; regression R^2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig

logger = logging.getLogger(__name__)

METRICS = {"binary": "roc_auc", "multiclass": "balanced_accuracy", "regression": "r2"}
"""The single-feature score per task (what `validate.leakage_threshold` is compared with)."""

MIN_ROWS = 100
"""Below this many labelled rows a single-feature score is too noisy to call anything a leak."""

MIN_CLASS_ROWS = 10
"""Classification: each label needs this many rows, else scores on its few rows are chance."""

MAX_LEAVES = 64
"""Tree size: enough to follow a monotone copy of the label closely, small enough to fit in milliseconds."""

MAX_ROWS = 200_000
"""Above this many labelled rows the features are scored on a seeded sample of them: a copy of the label scores
near 1 on 200,000 rows as plainly as on millions (a ROC AUC's standard error there is ~0.001), and the check,
which fits a tree per numeric feature, stays a few seconds instead of growing with the data."""

MISSING = "\x00missing"
"""Category key for a null value (kept apart from any real category text)."""


@dataclass
class LeakageScores:
    """Held-out score of each feature alone, or why the check was skipped."""

    metric: str
    scores: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    skipped: str | None = None


def feature_scores(frame: pd.DataFrame, dataset: DatasetConfig, seed: int) -> LeakageScores:
    """Score every declared feature alone against the target (rows with a null target are left out)."""
    metric = METRICS[dataset.task]
    positions = np.flatnonzero(frame[dataset.target].notna().to_numpy())
    if len(positions) > MAX_ROWS:  # sampled before any rows are copied: a 10M-row table is never copied whole
        logger.info("leakage: scoring a seeded sample of %d of %d labelled rows", MAX_ROWS, len(positions))
        positions = positions[np.sort(np.random.default_rng(seed).choice(len(positions), MAX_ROWS, replace=False))]
    labelled = frame.iloc[positions]
    result = LeakageScores(metric=metric, rows=len(labelled))
    if len(labelled) < MIN_ROWS:
        result.skipped = f"only {len(labelled)} labelled rows (needs {MIN_ROWS})"
        return result
    if dataset.is_classification:
        y_text = labelled[dataset.target].astype("str").to_numpy()
        classes, y = np.unique(y_text, return_inverse=True)
        counts = np.bincount(y, minlength=len(classes))
        if len(classes) < 2 or counts.min() < MIN_CLASS_ROWS:
            result.skipped = f"label counts {dict(zip(classes.tolist(), counts.tolist(), strict=True))} too small"
            return result
    else:
        y = pd.to_numeric(labelled[dataset.target], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(y).all():
            result.skipped = "target is not numeric and finite"
            return result
        classes = np.array([])
    folds = _folds(y, dataset.is_classification, seed)
    positive = _positive_index(dataset, classes)
    for name in dataset.features:
        if name not in labelled.columns:
            continue
        column = labelled[name]
        numeric = dataset.schema[name].type != "category"
        oof = _out_of_fold(column, y, folds, numeric, dataset.task, len(classes), positive, seed)
        result.scores[name] = _score(oof, y, dataset.task, positive)
    return result


def leaks(scores: LeakageScores, threshold: float) -> dict[str, float]:
    """Features whose single-feature score reaches the threshold, best first."""
    hits = {c: s for c, s in scores.scores.items() if s >= threshold}
    return dict(sorted(hits.items(), key=lambda item: -item[1]))


def _folds(y: np.ndarray, classification: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two seeded folds (stratified for classification): each half is scored by a model of the other."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (
        StratifiedKFold(2, shuffle=True, random_state=seed)
        if classification
        else KFold(2, shuffle=True, random_state=seed)
    )
    return list(splitter.split(np.zeros(len(y)), y))


def _positive_index(dataset: DatasetConfig, classes: np.ndarray) -> int:
    """Index of the positive label among the sorted classes (binary); 1 when it is not present."""
    if dataset.task != "binary":
        return -1
    hits = np.flatnonzero(classes == str(dataset.positive_label))
    return int(hits[0]) if len(hits) else 1


def _out_of_fold(
    column: pd.Series,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    numeric: bool,
    task: str,
    n_classes: int,
    positive: int,
    seed: int,
) -> np.ndarray:
    """Predictions for every row from a model fit on the other fold (score for binary, label or value otherwise)."""
    oof = np.zeros(len(y), dtype=float)
    if numeric:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float).reshape(-1, 1)
        for fit, held in folds:
            oof[held] = _tree_predict(values[fit], y[fit], values[held], task, positive, seed)
        return oof
    keys = column.astype("str").where(column.notna(), MISSING).to_numpy()
    for fit, held in folds:
        oof[held] = _category_predict(keys[fit], y[fit], keys[held], task, n_classes, positive)
    return oof


def _tree_predict(
    x_fit: np.ndarray, y_fit: np.ndarray, x_held: np.ndarray, task: str, positive: int, seed: int
) -> np.ndarray:
    """A small tree on one numeric column (sklearn trees route NaN to their own side)."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    if task == "regression":
        model = DecisionTreeRegressor(max_leaf_nodes=MAX_LEAVES, min_samples_leaf=5, random_state=seed)
        return model.fit(x_fit, y_fit).predict(x_held)
    model = DecisionTreeClassifier(max_leaf_nodes=MAX_LEAVES, min_samples_leaf=5, random_state=seed)
    model.fit(x_fit, y_fit)
    if task == "binary":
        proba = model.predict_proba(x_held)
        where = np.flatnonzero(model.classes_ == positive)
        return proba[:, where[0]] if len(where) else np.zeros(len(x_held))
    return model.predict(x_held).astype(float)


def _category_predict(
    keys_fit: np.ndarray, y_fit: np.ndarray, keys_held: np.ndarray, task: str, n_classes: int, positive: int
) -> np.ndarray:
    """Per-category target mean (binary: positive share) or majority class, learnt on the fitting fold."""
    fit = pd.DataFrame({"key": keys_fit})
    if task == "multiclass":
        table = pd.crosstab(fit["key"], y_fit)
        majority = table.idxmax(axis=1)
        prior = float(np.bincount(y_fit, minlength=n_classes).argmax())
        return pd.Series(keys_held).map(majority).fillna(prior).to_numpy(dtype=float)
    target = (y_fit == positive).astype(float) if task == "binary" else y_fit
    means = fit.assign(y=target).groupby("key")["y"].mean()
    return pd.Series(keys_held).map(means).fillna(float(target.mean())).to_numpy(dtype=float)


def _score(pred: np.ndarray, y: np.ndarray, task: str, positive: int) -> float:
    """How well the one-feature predictions match the label (see METRICS)."""
    from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

    if task == "binary":
        auc = float(roc_auc_score(y == positive, pred))
        return max(auc, 1.0 - auc)
    if task == "multiclass":
        return float(balanced_accuracy_score(y, pred.astype(int)))
    return float(r2_score(y, pred))
