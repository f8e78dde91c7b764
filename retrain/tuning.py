"""Seeded, cross-validated hyperparameter search (Optuna TPE) for one model family.

Folds follow the task and the split design (`make_folds`): stratified for classification, shuffled
KFold for regression, grouped when a group column is set (no group on both sides of a fold), and
time-ordered (TimeSeriesSplit: always train on the past) when a time column is set.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold, TimeSeriesSplit

from retrain.config import FamilyConfig, ParamRange
from retrain.errors import DataError
from retrain.metrics import get_metric, score
from retrain.models import build_model, pipeline_scores

logger = logging.getLogger(__name__)

Folds = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class TuningResult:
    """The outcome of one family's search: best params, its CV score (the metric's real value), every trial."""

    family: str
    best_params: dict[str, Any]
    cv_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    direction: str = "maximize"


def suggest(trial: optuna.Trial, name: str, space: ParamRange) -> Any:
    """Draw one hyperparameter from its declared range."""
    if space.choices is not None:
        return trial.suggest_categorical(name, list(space.choices))
    if space.int:
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)  # type: ignore[arg-type]
    return trial.suggest_float(name, float(space.low), float(space.high), log=space.log)  # type: ignore[arg-type]


def cv_score(
    family: str,
    params: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    folds: Folds,
    numeric: list[str],
    categorical: list[str],
    metric: str,
    *,
    task: str = "binary",
    n_classes: int = 2,
) -> float:
    """Mean validation metric over the folds (NaN if any fold's metric is NaN)."""
    scores = []
    for train_idx, valid_idx in folds:
        model = build_model(family, params, numeric, categorical, task=task)
        model.fit(X.iloc[train_idx], y[train_idx])
        predicted = pipeline_scores(model, X.iloc[valid_idx], task, n_classes)
        scores.append(score(metric, y[valid_idx], predicted))
    return float(np.mean(scores))


def make_folds(
    y: np.ndarray,
    n_folds: int,
    seed: int,
    *,
    task: str,
    groups: pd.Series | np.ndarray | None = None,
    ordered: bool = False,
    labels: Sequence[str] | None = None,
) -> Folds:
    """CV folds for the task: stratified (classification), KFold (regression), grouped, or time-ordered.

    `ordered` means the rows are sorted by time: each fold trains on earlier rows only. `groups` keeps
    each group on one side of every fold (stratified by class too, for classification). Impossible
    fold counts fail with a DataError naming candidates.cv_folds and what is short.
    """
    y = np.asarray(y)
    n_rows = len(y)
    placeholder = np.zeros(n_rows)
    if n_rows < 2 * n_folds:
        raise DataError(f"candidates: {n_rows} training rows are too few for candidates.cv_folds = {n_folds}")
    if ordered:
        return [(a, b) for a, b in TimeSeriesSplit(n_splits=n_folds).split(placeholder)]
    if groups is not None:
        codes, uniques = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), use_na_sentinel=False)
        if len(uniques) < n_folds:
            raise DataError(
                f"candidates: split.group_column has {len(uniques)} distinct groups in train, fewer than "
                f"candidates.cv_folds = {n_folds}"
            )
        if task == "regression":
            grouped = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(placeholder, y, codes)
        else:
            grouped = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
                placeholder, y, codes
            )
        return [(a, b) for a, b in grouped]
    if task == "regression":
        return [(a, b) for a, b in KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(placeholder)]
    classes, counts = np.unique(y, return_counts=True)
    rarest = int(np.argmin(counts))
    if counts[rarest] < n_folds:
        code = int(classes[rarest])
        name = labels[code] if labels is not None and 0 <= code < len(labels) else str(code)
        raise DataError(
            f"candidates: class {name!r} has {int(counts[rarest])} training rows, fewer than "
            f"candidates.cv_folds = {n_folds}"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(a, b) for a, b in splitter.split(placeholder, y)]


def tune(
    family: str,
    cfg: FamilyConfig,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    numeric: list[str],
    categorical: list[str],
    metric: str,
    n_trials: int,
    n_folds: int,
    seed: int,
    task: str = "binary",
    labels: Sequence[str] | None = None,
    groups: pd.Series | np.ndarray | None = None,
    ordered: bool = False,
) -> TuningResult:
    """TPE search over the family's space, each trial scored by k-fold CV on the training split.

    The study optimises in the metric's own direction (maximize r2 / roc_auc, minimize rmse / log_loss),
    so trial values and the CV score are real metric values.
    """
    started = time.perf_counter()
    folds = make_folds(y, n_folds, seed, task=task, groups=groups, ordered=ordered, labels=labels)
    n_classes = len(labels) if labels is not None and task != "regression" else 2
    direction = get_metric(metric).optuna_direction

    def objective(trial: optuna.Trial) -> float:
        params = {"random_state": seed, **cfg.fixed, **{k: suggest(trial, k, s) for k, s in cfg.space.items()}}
        return cv_score(family, params, X, y, folds, numeric, categorical, metric, task=task, n_classes=n_classes)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials if cfg.space else 1, n_jobs=1)
    trials = [{"number": t.number, "value": t.value, "state": t.state.name, "params": t.params} for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    if not complete:
        raise DataError(
            f"candidates: every {family} trial's CV {metric} was NaN (a fold may lack a class, e.g. with "
            f"grouped or time-ordered folds; or the model's scores were not finite)"
        )
    best = {"random_state": seed, **cfg.fixed, **study.best_params}
    logger.info("%s: best CV %s = %.4f (%s) with %s", family, metric, study.best_value, direction, study.best_params)
    return TuningResult(family, best, float(study.best_value), trials, time.perf_counter() - started, direction)
