"""Seeded, cross-validated hyperparameter search (Optuna TPE) for one model family.

Folds follow the task and the split design (`make_folds`): stratified for classification, shuffled
KFold for regression, grouped when a group column is set (no group on both sides of a fold), and
time-ordered (TimeSeriesSplit: always train on the past) when a time column is set.

Each trial reports its running mean fold score after every fold, so a MedianPruner stops trials that
are already worse than the median of earlier ones. Trials of a family with boosting rounds (its record's
`fit_rounds`: LightGBM) with `pruning_warmup_rounds` report on boosting rounds instead: every few rounds
the fold's validation loss, compared with the other trials at the same fold and round, so a hopeless trial
stops mid-fold. Those trials also stop boosting early inside each fold (`early_stopping_rounds`, on the
fold's validation loss) and the mean best round count becomes `n_estimators` of the refit. Each family has
its own budget (`n_trials`, `timeout_seconds`); once one trial has completed, a trial still running at the
timeout is stopped there (pruned: inside the boosting loop, else between folds) instead of running past
it. Parallel trials never oversubscribe the cores: threads per model x parallel trials <= os.cpu_count();
how a family takes its thread count is its record's `threads` (retrain/models/families.py).

A search can be warm-started: declared configs (`warm_start`) and the caller's (the champion's params) are
enqueued as its first trials. After it, `choose_refit` refits the best params on train at each learning-rate
divisor and keeps the fewest trees whose valid score is within a tolerance of the best (deterministic).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
import pandas as pd
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import MaxTrialsCallback
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from retrain.config import FamilyConfig, ParamRange
from retrain.errors import DataError
from retrain.metrics import get_metric, score
from retrain.models.estimators import build_model, pipeline_scores
from retrain.models.families import get_family

logger = logging.getLogger(__name__)

Folds = list[tuple[np.ndarray, np.ndarray]]

TPE_STARTUP_TRIALS = 5
"""Random trials before TPE models the space (Optuna's default of 10 wastes small budgets)."""

PRUNE_REPORT_EVERY = 10
"""Boosting rounds between two reports of a fold's validation loss to the pruner."""

ROUND_STEP_STRIDE = 1_000_000
"""Pruner step of round r in fold f = f * stride + r: trials are compared at the same fold and round."""

TrialCallback = Callable[[str, int, int], None]
"""on_trial(family, trials done, budget), after each finished trial: how a caller shows progress (a bar, an
artifact) without this module knowing where; the trial's log line is written here either way."""


@dataclass
class TuningResult:
    """The outcome of one family's search: best params, its CV score (the metric's real value), every trial.

    `oof` holds the best trial's out-of-fold scores on the training rows (`oof_rows` says which rows a
    fold validated: time-ordered folds never validate the first block); stacking fits on them.
    """

    family: str
    best_params: dict[str, Any]
    cv_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    direction: str = "maximize"
    oof: np.ndarray | None = None
    oof_rows: np.ndarray | None = None
    n_pruned: int = 0
    threads: int = 1
    fold_rows: float = 0.0
    refit_divisor: float = 1.0

    @property
    def rounds_tuned(self) -> bool:
        """True when the search early-stopped boosting rounds (the refit's rounds and learning rate can move)."""
        return (
            "n_estimators" in self.best_params
            and bool(self.fold_rows)
            and any("n_estimators" in t for t in self.trials)
        )

    def refit_params(self, n_rows: int, divisor: float | None = None) -> dict[str, Any]:
        """Best params for a refit on n_rows: early-stopped rounds scaled to the data, learning rate divided.

        The folds' mean best round count was found on `fold_rows` rows; more rows support more rounds,
        scaled by sqrt(n_rows / fold_rows) (checked on valid, never on test). With a divisor d (default
        `refit_divisor`, the one `choose_refit` kept) the refit learns d times slower for d times the rounds.
        """
        divisor = self.refit_divisor if divisor is None else divisor
        params = dict(self.best_params)
        if self.rounds_tuned:
            scale = math.sqrt(max(n_rows / self.fold_rows, 1.0)) * divisor
            params["n_estimators"] = max(1, round(params["n_estimators"] * scale))
            if divisor != 1.0 and "learning_rate" in params:
                params["learning_rate"] = params["learning_rate"] / divisor
        return params


@dataclass
class RefitChoice:
    """The train-only refit that was kept: its divisor, model, valid scores, and every refit tried."""

    divisor: float
    model: Pipeline
    valid_scores: np.ndarray
    valid_score: float
    fit_seconds: float
    predict_seconds: float
    tried: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Progress:
    """Optuna callback: one log line per finished trial with counts, the best so far and an ETA."""

    family: str
    metric: str
    budget: int
    timeout: float | None
    started: float
    on_trial: TrialCallback | None = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Log `trial k/n`, its state and value, the best value, pruned count, elapsed seconds and the ETA."""
        done = len(study.trials)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * max(self.budget - done, 0)
        if self.timeout is not None:
            eta = min(eta, max(self.timeout - elapsed, 0.0))
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = f"{study.best_value:.4f}" if complete else "-"
        # a pruned trial's value is its last intermediate report (a negated loss on boosting rounds), not a score
        complete_here = trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None
        value = f"{trial.value:.4f}" if complete_here else trial.state.name.lower()
        logger.info(
            "%s: trial %d/%d %s, best CV %s %s, %d pruned, %.0fs elapsed, ETA %.0fs",
            self.family, done, self.budget, value, self.metric, best, pruned, elapsed, eta,
        )  # fmt: skip
        if self.on_trial is not None:
            self.on_trial(self.family, done, self.budget)


def trial_budget(cfg: FamilyConfig, n_trials: int) -> int:
    """The family's trial count: its own n_trials, else the stage's; 1 for a family with nothing to search."""
    return (cfg.n_trials or n_trials) if cfg.space else 1


def suggest(trial: optuna.Trial, name: str, space: ParamRange) -> Any:
    """Draw one hyperparameter from its declared range."""
    if space.choices is not None:
        return trial.suggest_categorical(name, list(space.choices))
    if space.int:
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)  # type: ignore[arg-type]
    return trial.suggest_float(name, float(space.low), float(space.high), log=space.log)  # type: ignore[arg-type]


def plan_threads(requested: Any, parallel_trials: int, cpus: int | None = None) -> tuple[int, int]:
    """(parallel trials, threads per model) with their product <= the CPU count; the decision is logged."""
    cpus = cpus or os.cpu_count() or 1
    parallel = min(parallel_trials, cpus)
    per_trial = max(1, cpus // parallel)
    wanted = int(requested) if requested is not None and int(requested) > 0 else per_trial
    threads = min(wanted, per_trial)
    if parallel != parallel_trials or threads != wanted:
        logger.info(
            "threads: %d parallel trials x %d threads requested on %d CPUs; using %d x %d (never oversubscribe)",
            parallel_trials,
            wanted,
            cpus,
            parallel,
            threads,
        )
    else:
        logger.info("threads: %d parallel trials x %d threads per model on %d CPUs", parallel, threads, cpus)
    return parallel, threads


def requested_threads(family: str, fixed: dict[str, Any]) -> Any:
    """The threads per model a family's `fixed` asks for (its record's `threads.requested_by`), else None."""
    key = get_family(family).threads.requested_by
    return fixed.get(key) if key is not None else None


def with_threads(family: str, params: dict[str, Any], threads: int) -> dict[str, Any]:
    """The params with the family's thread hyperparameter set to the planned value (see `Threads`).

    Thread aliases the record drops are removed; a family without a thread parameter (hgb, the linear
    ones) is bounded by threadpoolctl around every fit instead.
    """
    spec = get_family(family).threads
    if not spec.drop and spec.param is None:
        return params
    rest = {k: v for k, v in params.items() if k not in spec.drop}
    return {**rest, spec.param: threads} if spec.param is not None else rest


def optuna_storage(spec: str | None, root: Path | None = None) -> BaseStorage | None:
    """None (in memory), a JournalStorage on `journal:<file>` (relative to root), or an RDBStorage on the URL."""
    if spec is None:
        return None
    spec = anchored_storage(spec, root)
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return rdb_storage(spec)


def anchored_storage(spec: str, root: Path | None) -> str:
    """`journal:<file>` made absolute against the project root (another process, a Dask worker, opens it
    elsewhere); an RDB URL as it is."""
    if root is None or not spec.startswith("journal:"):
        return spec
    path = Path(spec.removeprefix("journal:"))
    return f"journal:{path if path.is_absolute() else root / path}"


def rdb_storage(url: str, attempts: int = 5) -> RDBStorage:
    """Optuna's RDB storage, retried when another process is creating the schema of a fresh shared database at the
    same moment (two hosts' first searches: PostgreSQL's CREATE TYPE races and one side gets a unique violation)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts):
        try:
            return RDBStorage(url)
        except (IntegrityError, ProgrammingError) as exc:
            logger.info("optuna storage: schema being created elsewhere (%s); retry %d", type(exc).__name__, attempt)
            time.sleep(0.5 * attempt)
    return RDBStorage(url)  # the last attempt raises whatever is still wrong


def unused_study_name(storage: BaseStorage | str | None, name: str) -> str:
    """`name`, or `name-retry<k>` when an earlier attempt of the same search left a study by that name (its worker
    died mid-search): a re-run starts its own study, so it runs the same trials as the first attempt would."""
    if storage is None:
        return name
    taken = set(optuna.get_all_study_names(storage))
    attempt, candidate = 1, name
    while candidate in taken:
        attempt += 1
        candidate = f"{name}-retry{attempt}"
    if candidate != name:
        logger.warning("study %s exists (an earlier attempt of this search): this attempt uses %s", name, candidate)
    return candidate


class RoundPruning:
    """LightGBM callback that lets Optuna prune a trial on boosting rounds, not only between folds.

    Reports the first validation metric every `every` rounds, negated when LightGBM's sense of "better"
    is not the study's (a log loss in a maximize study), and asks the pruner only after `warmup` rounds.
    """

    order = 40  # after early stopping (30), so a fold that just stopped is not reported once more

    def __init__(self, trial: optuna.Trial, fold: int, warmup: int, maximize: bool, every: int = PRUNE_REPORT_EVERY):
        self.trial, self.fold, self.warmup, self.maximize, self.every = trial, fold, warmup, maximize, every

    def __call__(self, env: Any) -> None:
        """Report on every `every`-th round; raise optuna.TrialPruned when the pruner says so."""
        done = env.iteration + 1
        if done % self.every or not env.evaluation_result_list:
            return
        _, name, value, higher_is_better = env.evaluation_result_list[0][:4]
        if not math.isfinite(value):
            return
        self.trial.report(value if higher_is_better == self.maximize else -value, self.fold * ROUND_STEP_STRIDE + done)
        if done >= self.warmup and self.trial.should_prune():
            raise optuna.TrialPruned(f"fold {self.fold} round {done}: validation {name} {value:.4f}")


class Deadline:
    """LightGBM callback that stops a trial once the family's wall budget is spent (raises optuna.TrialPruned)."""

    order = 45  # after RoundPruning (40)

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, env: Any) -> None:
        """Checked every round: a clock read, nothing else."""
        if time.perf_counter() > self.deadline:
            raise optuna.TrialPruned(f"timeout_seconds reached at boosting round {env.iteration + 1}")


def fit_model(
    family: str,
    params: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    numeric: list[str],
    categorical: list[str],
    task: str,
    threads: int = 1,
    eval_set: tuple[pd.DataFrame, np.ndarray] | None = None,
    early_stopping_rounds: int | None = None,
    callbacks: Sequence[Any] = (),
) -> Pipeline:
    """Fit one family's Pipeline; given an eval set, boosting stops once the eval loss stops improving.

    Early stopping and the round callbacks are the family record's `fit_rounds` (LightGBM); a family
    without boosting rounds fits plainly.
    """
    fit_rounds = get_family(family).fit_rounds
    model = build_model(family, with_threads(family, params, threads), numeric, categorical, task=task)
    with threadpool_limits(limits=threads):
        if fit_rounds is not None and eval_set is not None and early_stopping_rounds:
            return fit_rounds(model, X, y, eval_set, early_stopping_rounds, callbacks)
        return model.fit(X, y)


def cv_evaluate(
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
    threads: int = 1,
    early_stopping_rounds: int | None = None,
    trial: optuna.Trial | None = None,
    pruning_warmup_rounds: int | None = None,
    deadline: float | None = None,
) -> tuple[float, np.ndarray, list[int]]:
    """Mean fold metric, out-of-fold scores and the best boosting round per fold (pruned via `trial`).

    With a `deadline` (a `time.perf_counter()` value) the evaluation raises optuna.TrialPruned once it
    passes: checked every boosting round (a family with boosting rounds, early-stopped) and before each fold.

    NaN if any fold's metric is NaN. After each fold the running mean is reported to the trial, which
    raises optuna.TrialPruned when the pruner judges it hopeless; with `pruning_warmup_rounds` a fit with
    boosting rounds (LightGBM) reports on them instead (`RoundPruning`).
    """
    in_rounds = get_family(family).boosting_rounds and bool(early_stopping_rounds)
    on_rounds = trial is not None and in_rounds and pruning_warmup_rounds is not None
    maximize = get_metric(metric).optuna_direction == "maximize"
    oof = np.zeros((len(y), n_classes) if task == "multiclass" else len(y), dtype=float)
    scores: list[float] = []
    rounds: list[int] = []
    timed = [Deadline(deadline)] if deadline is not None and in_rounds else []
    for step, (train_idx, valid_idx) in enumerate(folds):
        if deadline is not None and time.perf_counter() > deadline:
            raise optuna.TrialPruned(f"timeout_seconds reached before fold {step}")
        X_valid, y_valid = X.iloc[valid_idx], y[valid_idx]
        model = fit_model(
            family,
            params,
            X.iloc[train_idx],
            y[train_idx],
            numeric=numeric,
            categorical=categorical,
            task=task,
            threads=threads,
            eval_set=(X_valid, y_valid),
            early_stopping_rounds=early_stopping_rounds,
            callbacks=[*([RoundPruning(trial, step, pruning_warmup_rounds, maximize)] if on_rounds else []), *timed],  # type: ignore[arg-type]
        )
        best_round = getattr(model.named_steps["model"], "best_iteration_", None)
        if in_rounds and best_round:
            rounds.append(int(best_round))
        with threadpool_limits(limits=threads):
            predicted = pipeline_scores(model, X_valid, task, n_classes)
        oof[valid_idx] = predicted
        scores.append(score(metric, y_valid, predicted))
        running = float(np.mean(scores))
        if trial is not None and not on_rounds and math.isfinite(running):
            trial.report(running, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {step}: running CV {metric} {running:.4f}")
    return float(np.mean(scores)), oof, rounds


def within(value: float, best: float, tolerance: float, maximize: bool) -> bool:
    """True when `value` is no worse than `best` by more than `tolerance` x |best| (a relative tolerance)."""
    margin = tolerance * abs(best)
    return value >= best - margin if maximize else value <= best + margin


def choose_refit(
    family: str,
    result: TuningResult,
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    *,
    metric: str,
    numeric: list[str],
    categorical: list[str],
    task: str,
    n_classes: int,
    threads: int,
    divisors: Sequence[float] = (1.0,),
    tolerance: float = 0.0,
    fitter: Callable[..., Pipeline] | None = None,
) -> RefitChoice:
    """Refit the best params on train once per learning-rate divisor; keep the fewest trees that score as well.

    Each divisor d refits with learning_rate / d and d x the rounds; the refit with the fewest trees whose
    valid score is within `tolerance` (relative) of the best refit's is kept, and `result.refit_divisor` is set
    to its d (the train + valid refit uses it). Deterministic: the same fits in the same order, ties go to
    fewer trees. A family without tuned boosting rounds is refitted once, as tuned. `fitter` (default
    `fit_model`) fits each refit: the candidates stage passes one that trains a large LightGBM fit on Dask.
    """
    maximize = get_metric(metric).optuna_direction == "maximize"
    fits: list[RefitChoice] = []
    for divisor in sorted(divisors) if result.rounds_tuned else [1.0]:
        params = result.refit_params(len(X_train), divisor)
        started = time.perf_counter()
        model = (fitter or fit_model)(
            family, params, X_train, y_train, numeric=numeric, categorical=categorical, task=task, threads=threads
        )
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        with threadpool_limits(limits=threads):
            scores = pipeline_scores(model, X_valid, task, n_classes)
        predicted = time.perf_counter() - started
        value = score(metric, y_valid, scores)
        fits.append(RefitChoice(divisor, model, scores, value, fitted, predicted))
        logger.info(
            "%s: refit on train with learning_rate / %g (%s trees) in %.1f s: valid %s %.5f",
            family, divisor, params.get("n_estimators", "-"), fitted, metric, value,
        )  # fmt: skip
    finite = [f.valid_score for f in fits if math.isfinite(f.valid_score)]
    best = (max(finite) if maximize else min(finite)) if finite else math.nan
    kept = next((f for f in fits if finite and within(f.valid_score, best, tolerance, maximize)), fits[0])
    kept.tried = [
        {
            "learning_rate_divisor": f.divisor,
            "n_estimators": result.refit_params(len(X_train), f.divisor).get("n_estimators"),
            f"valid_{metric}": f.valid_score,
        }
        for f in fits
    ]
    if len(fits) > 1:
        logger.info(
            "%s: kept the refit with learning_rate / %g (fewest trees within %g (relative) of the best valid %s %.5f)",
            family, kept.divisor, tolerance, metric, best,
        )  # fmt: skip
    result.refit_divisor = kept.divisor
    return kept


def in_space(params: Mapping[str, Any], space: Mapping[str, ParamRange]) -> dict[str, Any]:
    """The params that are points of the search space (a champion tuned over another space keeps the rest out)."""
    return {k: v for k, v in params.items() if k in space and space[k].outside(v) is None}


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


def enqueue_warm_start(
    study: optuna.Study, configs: Sequence[Mapping[str, Any]], space: Mapping[str, ParamRange], family: str
) -> None:
    """Enqueue each warm-start config (cut to the space; duplicates once) as the study's next trials."""
    seen: list[dict[str, Any]] = []
    for config in configs:
        params = in_space(config, space)
        if not params or params in seen:
            continue
        seen.append(params)
        study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
    if seen:
        logger.info("%s: %d warm-start trial(s) first: %s", family, len(seen), seen)


@dataclass
class Objective:
    """One trial: the sampled params' k-fold CV score on the training split; picklable, so a trial loop in another
    process (`join_study`) runs the same trials. `oofs` keeps each trial's out-of-fold scores where it ran."""

    family: str
    cfg: FamilyConfig
    X: pd.DataFrame
    y: np.ndarray
    folds: Folds
    numeric: list[str]
    categorical: list[str]
    metric: str
    task: str
    n_classes: int
    threads: int
    early: int | None
    deadline: float | None
    seed: int = 0
    oofs: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A lock for `oofs` (parallel trials in threads); not pickled: each process gets its own."""
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the lock, which cannot cross a process boundary."""
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the fields and give this process its own lock."""
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def params(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full params: seed, the family's fixed ones, then the sampled ones."""
        return {"random_state": self.seed, **self.cfg.fixed, **sampled}

    def cv(
        self, params: dict[str, Any], trial: optuna.Trial | None = None, deadline: float | None = None
    ) -> tuple[float, np.ndarray, list[int]]:
        """(CV score, out-of-fold scores, best rounds per fold) of `params` on this search's folds."""
        return cv_evaluate(
            self.family,
            params,
            self.X,
            self.y,
            self.folds,
            self.numeric,
            self.categorical,
            self.metric,
            task=self.task,
            n_classes=self.n_classes,
            threads=self.threads,
            early_stopping_rounds=self.early,
            trial=trial,
            pruning_warmup_rounds=self.cfg.pruning_warmup_rounds if trial is not None else None,
            deadline=deadline,
        )

    def __call__(self, trial: optuna.Trial) -> float:
        """Score the trial's params by CV; the clock stops a trial only once one has completed."""
        trial.set_user_attr("ran_on", f"{socket.gethostname()}:{os.getpid()}")  # which worker, in a shared study
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        sampled = {k: suggest(trial, k, s) for k, s in self.cfg.space.items()}
        value, oof, rounds = self.cv(self.params(sampled), trial, self.deadline if done else None)
        if rounds:
            trial.set_user_attr("n_estimators", round(float(np.mean(rounds))))
        with self._lock:
            self.oofs[trial.number] = oof
        return value


class TrialSpread(Protocol):
    """Runs `work(i)` for i = 1..copies in other processes while the caller runs its own trials; the context
    yields a join that waits for them and returns each one's out-of-fold scores by trial number."""

    def __call__(
        self, work: Callable[[int], dict[int, np.ndarray]], copies: int
    ) -> AbstractContextManager[Callable[[], list[dict[int, np.ndarray]]]]: ...


def sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The search's TPE sampler (a few random trials first, then a multivariate model of the space)."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True)


def pruner() -> optuna.pruners.BasePruner:
    """Median pruning against earlier trials once a few have finished."""
    return optuna.pruners.MedianPruner(n_startup_trials=TPE_STARTUP_TRIALS, n_warmup_steps=0)


def join_study(
    objective: Objective, study_name: str, storage: str, seed: int, budget: int, timeout: float | None, copy: int
) -> dict[int, np.ndarray]:
    """A second trial loop on a study shared through an RDB storage: it runs trials until the study holds
    `budget` of them (any state) and returns their out-of-fold scores (the best trial may be one of them)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective.deadline = None if timeout is None else time.perf_counter() + timeout  # this host's clock
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler(seed + copy), pruner=pruner())
    if len(study.trials) >= budget:  # the other loops spent the budget before this one started
        return {}
    study.optimize(objective, n_trials=budget, timeout=timeout, callbacks=[MaxTrialsCallback(budget, states=None)])
    logger.info(
        "%s: trial loop %d ran %d trial(s) of study %s", objective.family, copy, len(objective.oofs), study_name
    )
    return objective.oofs


def best_oof(objective: Objective, best: optuna.trial.FrozenTrial) -> np.ndarray:
    """The best trial's out-of-fold scores: kept where its trial loop ran, else recomputed (same folds, same
    params, deterministic) when that loop is gone, e.g. a Dask worker that died after the trial."""
    if best.number in objective.oofs:
        return objective.oofs[best.number]
    logger.info(
        "%s: recomputing the best trial's out-of-fold scores (trial %d ran elsewhere)", objective.family, best.number
    )
    return objective.cv(objective.params(best.params))[1]  # the params as the trial had them


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
    parallel_trials: int = 1,
    storage: BaseStorage | str | None = None,
    study_name: str | None = None,
    on_trial: TrialCallback | None = None,
    warm_start: Sequence[Mapping[str, Any]] = (),
    spread: TrialSpread | None = None,
) -> TuningResult:
    """TPE search over the family's space, each trial scored by k-fold CV on the training split.

    The study optimises in the metric's own direction (maximize r2 / roc_auc, minimize rmse / log_loss),
    so trial values and the CV score are real metric values. The budget is `cfg.n_trials` (default
    `n_trials`) and `cfg.timeout_seconds`. With `parallel_trials` 1 (the default) and no timeout the
    search is reproducible; parallel TPE trials are not. `on_trial` hears of every finished trial.
    The first trials are `cfg.warm_start` then `warm_start` (e.g. the champion's params, from the caller),
    each cut to the space and enqueued once; they count towards the budget.

    With `spread` (the Dask runner), `parallel_trials` > 1 and an RDB `storage`, the other `parallel_trials - 1`
    trial loops run in other processes (`join_study`, e.g. on other Dask workers) on the same study, shared
    through the database; the study stops at about `budget` trials in all (each loop may start one more).
    """
    started = time.perf_counter()
    folds = make_folds(y, n_folds, seed, task=task, groups=groups, ordered=ordered, labels=labels)
    n_classes = len(labels) if labels is not None and task != "regression" else 2
    direction = get_metric(metric).optuna_direction
    shared = storage if isinstance(storage, str) else storage.url if isinstance(storage, RDBStorage) else None
    spread_out = spread is not None and parallel_trials > 1 and shared is not None
    if spread_out:  # one trial at a time in each process, the others elsewhere: no local oversubscription
        parallel, threads = 1, plan_threads(requested_threads(family, cfg.fixed), 1)[1]
    else:
        parallel, threads = plan_threads(requested_threads(family, cfg.fixed), parallel_trials)
    early = cfg.early_stopping_rounds if get_family(family).boosting_rounds else None
    deadline = started + cfg.timeout_seconds if cfg.timeout_seconds is not None else None
    objective = Objective(
        family, cfg, X, y, folds, numeric, categorical, metric, task, n_classes, threads, early, deadline, seed
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=direction,
        sampler=sampler(seed),
        pruner=pruner(),
        storage=storage,
        study_name=study_name,
    )
    enqueue_warm_start(study, [*cfg.warm_start, *warm_start], cfg.space, family)
    budget = trial_budget(cfg, n_trials)
    progress = Progress(family, metric, budget, cfg.timeout_seconds, started, on_trial)
    if spread_out:
        assert spread is not None and shared is not None  # narrowed above
        copies = parallel_trials - 1
        logger.info("%s: %d trial process(es) elsewhere join study %s", family, copies, study.study_name)
        work = functools.partial(join_study, objective, study.study_name, shared, seed, budget, cfg.timeout_seconds)
        with spread(work, copies) as joined:
            study.optimize(
                objective,
                n_trials=budget,
                timeout=cfg.timeout_seconds,
                callbacks=[MaxTrialsCallback(budget, states=None), progress],
            )
            for found in joined():
                objective.oofs.update(found)
    else:
        study.optimize(objective, n_trials=budget, timeout=cfg.timeout_seconds, n_jobs=parallel, callbacks=[progress])
    trials = [
        {
            "number": t.number,
            "value": t.value,
            "state": t.state.name,
            "params": t.params,
            **({"n_estimators": t.user_attrs["n_estimators"]} if "n_estimators" in t.user_attrs else {}),
        }
        for t in study.trials
    ]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    if not complete:
        raise DataError(
            f"candidates: every {family} trial's CV {metric} was NaN (a fold may lack a class, e.g. with "
            f"grouped or time-ordered folds; or the model's scores were not finite)"
        )
    best_trial = study.best_trial
    best = {"random_state": seed, **cfg.fixed, **best_trial.params}
    if "n_estimators" in best_trial.user_attrs:
        best["n_estimators"] = best_trial.user_attrs["n_estimators"]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    seconds = time.perf_counter() - started
    logger.info(
        "%s: best CV %s = %.4f (%s) after %d trials (%d pruned, %.1fs) with %s",
        family,
        metric,
        best_trial.value,
        direction,
        len(study.trials),
        pruned,
        seconds,
        best_trial.params,
    )
    covered = np.zeros(len(y), dtype=bool)
    for _, valid_idx in folds:
        covered[valid_idx] = True
    return TuningResult(
        family,
        best,
        float(best_trial.value),
        trials,
        seconds,
        direction,
        oof=best_oof(objective, best_trial),
        oof_rows=covered,
        n_pruned=pruned,
        threads=threads,
        fold_rows=float(np.mean([len(train_idx) for train_idx, _ in folds])),
        refit_divisor=cfg.refit_learning_rate_divisors[0] if early else 1.0,
    )
