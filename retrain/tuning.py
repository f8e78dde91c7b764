"""Seeded, cross-validated hyperparameter search (Optuna TPE) for one model family."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from retrain.config import FamilyConfig, ParamRange
from retrain.errors import DataError
from retrain.metrics import score
from retrain.models import build_model

logger = logging.getLogger(__name__)


@dataclass
class TuningResult:
    """The outcome of one family's search: best params, its CV score and every trial."""

    family: str
    best_params: dict[str, Any]
    cv_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


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
    folds: list[tuple[np.ndarray, np.ndarray]],
    numeric: list[str],
    categorical: list[str],
    metric: str,
) -> float:
    """Mean validation metric over the folds."""
    scores = []
    for train_idx, valid_idx in folds:
        model = build_model(family, params, numeric, categorical)
        model.fit(X.iloc[train_idx], y[train_idx])
        scores.append(score(metric, y[valid_idx], model.predict_proba(X.iloc[valid_idx])[:, 1]))
    return float(np.mean(scores))


def make_folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds, with a clear error when a class is too rare for the fold count."""
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_folds:
        raise DataError(
            f"candidates: the rarest class has {counts.min()} training rows, fewer than candidates.cv_folds = {n_folds}"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


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
) -> TuningResult:
    """TPE search over the family's space, each trial scored by k-fold CV on the training split."""
    started = time.perf_counter()
    folds = make_folds(y, n_folds, seed)

    def objective(trial: optuna.Trial) -> float:
        params = {"random_state": seed, **cfg.fixed, **{k: suggest(trial, k, s) for k, s in cfg.space.items()}}
        return cv_score(family, params, X, y, folds, numeric, categorical, metric)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials if cfg.space else 1, n_jobs=1)
    trials = [{"number": t.number, "value": t.value, "params": t.params} for t in study.trials]
    best = {"random_state": seed, **cfg.fixed, **study.best_params}
    logger.info("%s: best CV %s = %.4f with %s", family, metric, study.best_value, study.best_params)
    return TuningResult(family, best, float(study.best_value), trials, time.perf_counter() - started)
