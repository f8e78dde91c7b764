"""candidates: tune each model family by cross-validated search, refit the best, save it safely.

Per family: the Optuna search (retrain/models/tuning.py) picks hyperparameters by k-fold CV on train; a refit
on train alone gives the honest valid score (what `evaluate` selects by); the saved model is a refit
of the same hyperparameters on train + valid. `stacking` fits a meta-learner on the out-of-fold scores
of the other families' best trials and saves their train + valid refits beside its coefficients.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from adapters import mlflow_registry as registry
from adapters.jsonfile import read_json, write_json
from adapters.mlflow_runs import open_run
from engine.context import StageContext, clear_outputs, finish, stage_run
from engine.progress import Reporter, artifact_key
from engine.scaleout import check_code, check_storage, code_identity, family_runner, trial_spread
from engine.stage import Stage
from retrain.catalog import CANDIDATES, DATASET_KEYS, LEARNING_CURVES, SPLITS, VALID_SCORES
from retrain.config import CandidatesConfig, DatasetConfig, FamilyConfig, RunnerConfig
from retrain.errors import DataError
from retrain.metrics import class_labels, encode_target, get_metric, score
from retrain.models.families import FAMILIES, check_family

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from retrain.models.tuning import TuningResult

logger = logging.getLogger(__name__)

SYSTEM_METRICS_INTERVAL = 2.0
"""Seconds between MLflow's samples of CPU, memory, disk and network during a family's run (a time series);
the MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL environment variable wins when set."""

MLFLOW_BATCH = 1000
"""mlflow.log_batch accepts at most 1000 metrics per call."""


@dataclass
class Design:
    """The training data of one candidates run: train and valid rows, targets and the CV layout."""

    dataset: DatasetConfig
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_valid: pd.DataFrame
    y_valid: np.ndarray
    groups: pd.Series | None
    ordered: bool
    labels: list[str] | None
    metric: str
    seed: int

    @property
    def n_classes(self) -> int:
        """Classes the scores cover (0 for regression)."""
        return len(self.labels) if self.labels else 0


@dataclass
class FamilyOutcome:
    """One family's tuned result, its honest valid score, its final (train + valid) model and timings."""

    result: TuningResult
    train_model: Pipeline | None
    final_model: Pipeline | None
    valid_scores: np.ndarray
    valid_score: float
    fit_seconds: float
    predict_rows_per_second: float
    final_params: dict[str, Any] | None = None
    refits: list[dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        """The summary.json entry (timings are dropped from the file by `_stable`)."""
        return {
            "cv_score": self.result.cv_score,
            "valid_score": self.valid_score,
            "valid_from": "refit on train only",
            "final_fit": "train + valid",
            "best_params": self.result.best_params,
            "final_params": self.final_params,
            "refits_on_train": self.refits,
            "n_trials": len(self.result.trials),
            "n_pruned": self.result.n_pruned,
            "tuning_seconds": round(self.result.seconds, 3),
            "fit_seconds": round(self.fit_seconds, 3),
            "predict_rows_per_second": round(self.predict_rows_per_second),
        }


WARM_FROM = "warm_start_from"
"""summary.json key: the champion model hash whose tuned params warm-started the searches (None: none did)."""


def warm_source(ctx: StageContext) -> str | None:
    """The champion (model hash) whose tuned params warm-start the searches, or None; also the cache input.

    A champion trained on other data (a scheduled retrain on new rows) is the source. One trained on this very
    data (typically this workspace's last run, promoted) is not a new input: the source recorded with the
    current outputs is kept, so an unchanged rerun after a promotion stays a cache hit.
    """
    cfg, promote = ctx.params.candidates, ctx.params.promote
    if not cfg.warm_start_from_champion:
        return None
    current = registry.champion(ctx.tracking.tracking_uri, promote.model_name, promote.alias)
    if current is None or not current.get("model_hash"):
        return None
    if current.get("data_hash") != ctx.tracking.tags.get("retrain.data_hash"):
        return str(current["model_hash"])
    summary = ctx.path(f"{CANDIDATES}/summary.json")
    return read_json(summary).get(WARM_FROM) if summary.is_file() else None


def warm_input(ctx: StageContext) -> dict[str, str]:
    """The stage's cache input from outside the workspace: the warm-start source (nothing when it is off)."""
    if not ctx.params.candidates.warm_start_from_champion:
        return {}
    return {WARM_FROM: warm_source(ctx) or "none"}


def logged_value(text: str) -> Any:
    """A param MLflow holds as a string, read back as YAML (numbers, booleans, lists); the string if it is not YAML."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def champion_params(ctx: StageContext, model_hash: str, families: list[str]) -> dict[str, dict[str, Any]]:
    """Each family's tuned params from the latest finished candidates run of the model version with this hash.

    Found by the version's data and params hashes (the run that tuned it, or an identical earlier one when
    the stage was cached); values are parsed back from MLflow's strings. Families without such a run are left out.
    """
    client = MlflowClient(ctx.tracking.tracking_uri)
    name = ctx.params.promote.model_name
    version = registry.find_version(client, name, model_hash)
    if version is None:
        logger.warning("candidates: no registered version of %s has model hash %s; no warm start", name, model_hash)
        return {}
    tags = client.get_model_version(name, version).tags
    found: dict[str, dict[str, Any]] = {}
    for family in families:
        runs = client.search_runs(
            [ctx.tracking.experiment_id],
            filter_string=(
                f"attributes.run_name = 'candidates/{family}' and attributes.status = 'FINISHED' "
                f"and tags.`retrain.data_hash` = '{tags.get('retrain.data_hash')}' "
                f"and tags.`retrain.params_hash` = '{tags.get('retrain.params_hash')}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            found[family] = {k: logged_value(v) for k, v in runs[0].data.params.items()}
    logger.info("candidates: warm start from champion v%s (%s): %s", version, model_hash[:12], sorted(found))
    return found


def cv_design(ctx: StageContext, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None, bool]:
    """The training rows in fold order, the CV groups (group_column) and whether folds are time-ordered.

    The split stage keeps the group and time columns in its files whether or not they are features.
    Rows are stably re-sorted by time_column (a no-op when split already sorted them), so each
    TimeSeriesSplit fold trains on the past only.
    """
    split = ctx.params.split
    for column in (split.group_column, split.time_column):
        if column is not None and column not in train.columns:
            raise DataError(f"candidates: column {column!r} (split config) is not in {SPLITS['train']}")
    if split.time_column is not None:
        ordered = train.sort_values(split.time_column, kind="stable").reset_index(drop=True)
        return ordered, None, True
    groups = train[split.group_column] if split.group_column is not None else None
    return train, groups, False


def fit_family(
    family: str,
    d: Design,
    cfg: CandidatesConfig,
    *,
    storage: Any = None,
    study: str | None = None,
    warm_start: tuple[dict[str, Any], ...] = (),
    spread: Any = None,
    runner: RunnerConfig | None = None,
) -> FamilyOutcome:
    """Search (warm-started, on `candidates.search_rows` of train), refit on train (valid score, refit rounds
    chosen), refit on train + valid; a large LightGBM fit trains on Dask (`runner.dask_lightgbm_min_rows`).

    Nothing is written here: the outcome (models included) goes back to the flow process, which saves it
    (`save_family`), so a family may run on a Dask worker that cannot see the project's directory at all.
    """
    from retrain.models.estimators import monotone_params
    from retrain.models.tuning import choose_refit, plan_threads, trial_budget

    dataset = d.dataset
    family_cfg = cfg.family(family)
    constraints = monotone_params(family, cfg.monotone, dataset.numeric, dataset.categorical, task=dataset.task)
    if constraints:
        family_cfg = family_cfg.model_copy(update={"fixed": {**family_cfg.fixed, **constraints}})
    elif cfg.monotone:
        logger.warning("candidates: %s cannot be built with monotone constraints %s", family, dict(cfg.monotone))
    if warm_start and family_cfg.warm_n_trials is not None:
        family_cfg = family_cfg.model_copy(update={"n_trials": family_cfg.warm_n_trials})
    progress = Reporter(artifact_key=artifact_key("retrain-tuning", family), log=logger)
    progress.start("candidates", trial_budget(family_cfg, cfg.n_trials), f"tuning {family}")
    try:
        result = tune_family(family, family_cfg, search_design(d, cfg.search_rows), cfg, storage, study, progress,
                             warm_start, spread)  # fmt: skip
    finally:
        progress.finish(log=False)  # tuning's own line closes the search (best CV, trials, pruned, seconds)
    _, threads = plan_threads(result.threads, 1)
    fit = dict(numeric=dataset.numeric, categorical=dataset.categorical, task=dataset.task, threads=threads)
    fitter = family_fitter(runner or RunnerConfig())
    kept = choose_refit(
        family,
        result,
        d.X_train,
        d.y_train,
        d.X_valid,
        d.y_valid,
        metric=d.metric,
        n_classes=d.n_classes,
        divisors=family_cfg.refit_learning_rate_divisors,
        tolerance=family_cfg.refit_tolerance,
        fitter=fitter,
        **fit,
    )
    train_model, valid_scores, fit_seconds = kept.model, kept.valid_scores, kept.fit_seconds
    logger.info("candidates: %s refit on train (%d rows) in %.1f s", family, len(d.X_train), fit_seconds)
    rate = len(d.X_valid) / max(kept.predict_seconds, 1e-9)
    X_full = pd.concat([d.X_train, d.X_valid], ignore_index=True)
    y_full = np.concatenate([d.y_train, d.y_valid])
    final_params = result.refit_params(len(X_full))
    started = time.perf_counter()
    final_model = fitter(family, final_params, X_full, y_full, **fit)
    seconds = time.perf_counter() - started
    logger.info("candidates: %s refit on train + valid (%d rows) in %.1f s", family, len(X_full), seconds)
    outcome = FamilyOutcome(result, train_model, final_model, valid_scores, kept.valid_score, fit_seconds, rate)
    outcome.final_params, outcome.refits = final_params, kept.tried
    return outcome


def tune_family(
    family: str,
    family_cfg: FamilyConfig,
    d: Design,
    cfg: CandidatesConfig,
    storage: Any,
    study: str | None,
    progress: Reporter,
    warm_start: tuple[dict[str, Any], ...] = (),
    spread: Any = None,
) -> TuningResult:
    """The family's Optuna search on train (warm-started), each finished trial moving `progress` (bar, artifact)."""
    from retrain.models.tuning import tune

    dataset = d.dataset
    return tune(
        family,
        family_cfg,
        d.X_train,
        d.y_train,
        numeric=dataset.numeric,
        categorical=dataset.categorical,
        metric=d.metric,
        n_trials=cfg.n_trials,
        n_folds=cfg.cv_folds,
        seed=d.seed,
        task=dataset.task,
        labels=d.labels,
        groups=d.groups,
        ordered=d.ordered,
        parallel_trials=cfg.parallel_trials,
        storage=storage,
        study_name=study,
        on_trial=lambda _family, done, _budget: progress.advance(done=done),
        warm_start=warm_start,
        spread=spread,
    )


def search_design(d: Design, rows: int | None) -> Design:
    """The train rows the search's CV trials see: all, or a seeded sample of about `rows` (label-stratified for
    classification, in train's order), so a large table's search costs what a sample's does; refits use all."""
    from retrain.models.sampling import search_positions

    positions = search_positions(d.y_train, rows, d.seed, stratify=d.dataset.task != "regression")
    if positions is None:
        return d
    logger.info(
        "candidates: the search runs on %d of %d train rows (candidates.search_rows)", len(positions), len(d.y_train)
    )
    groups = d.groups.iloc[positions].reset_index(drop=True) if d.groups is not None else None
    X = d.X_train.iloc[positions].reset_index(drop=True)
    return dataclasses.replace(d, X_train=X, y_train=d.y_train[positions], groups=groups)


def family_fitter(runner: RunnerConfig) -> Callable[..., Pipeline]:
    """How the family's refits are fitted: in this process (`fit_model`), or a LightGBM fit on at least
    `runner.dask_lightgbm_min_rows` rows data-parallel on the Dask cluster (retrain/models/distributed.py)."""
    from retrain.models.distributed import fit_lightgbm_on_cluster, use_dask_lightgbm
    from retrain.models.tuning import fit_model

    def fit(family: str, params: dict[str, Any], X: pd.DataFrame, y: np.ndarray, **kwargs: Any) -> Pipeline:
        """One refit, where its size says."""
        if not use_dask_lightgbm(runner, family, len(X)):
            return fit_model(family, params, X, y, **kwargs)
        columns = {k: kwargs[k] for k in ("numeric", "categorical", "task")}
        return fit_lightgbm_on_cluster(params, X, y, **columns, address=runner.dask_address)

    return fit


def fit_family_at(
    family: str,
    d: Design,
    cfg: CandidatesConfig,
    storage_spec: str | None,
    study: str,
    warm_start: tuple[dict[str, Any], ...] = (),
    code: str | None = None,
    runner: RunnerConfig | None = None,
) -> FamilyOutcome:
    """`fit_family` wherever it runs (this process or a Dask worker in any directory of any host).

    There it checks that it imports the flow's code (`code`, an md5 of the modules; None in the flow's own
    process), opens the Optuna storage (a storage object does not travel), names a fresh study when an earlier
    attempt left one (the family is re-run after its worker died), and on a Dask worker lets
    `parallel_trials` > 1 spread trial loops over the other workers through that shared study.
    """
    from retrain.models.tuning import optuna_storage, unused_study_name

    check_code(__name__, code)
    storage = optuna_storage(storage_spec)
    study = unused_study_name(storage, study)
    return fit_family(
        family, d, cfg, storage=storage, study=study, warm_start=warm_start, spread=trial_spread(), runner=runner
    )


def save_family(outcome: FamilyOutcome, family: str, d: Design, directory: Path) -> None:
    """Write a base family's train + valid refit (skops, hashed) where the flow runs, wherever it was fitted."""
    from retrain.models.estimators import save_model

    started = time.perf_counter()
    dataset = d.dataset
    save_model(outcome.final_model, family, dataset.features, directory, task=dataset.task, labels=d.labels)
    logger.info("candidates: %s saved in %.1f s", family, time.perf_counter() - started)


def fit_stacking(bases: dict[str, FamilyOutcome], d: Design, cfg: CandidatesConfig, directory: Path) -> FamilyOutcome:
    """Meta-learner on the bases' out-of-fold scores: CV-scored on the same folds, valid-scored, saved."""
    from retrain.models.estimators import fit_meta, save_stacking, stack_features
    from retrain.models.tuning import TuningResult, make_folds

    task, names = d.dataset.task, list(bases)
    started = time.perf_counter()
    rows = np.logical_and.reduce([b.result.oof_rows for b in bases.values()])
    oof = [bases[n].result.oof for n in names]
    features = stack_features(oof, task)
    params = cfg.family("stacking").fixed
    folds = make_folds(d.y_train, cfg.cv_folds, d.seed, task=task, groups=d.groups, ordered=d.ordered, labels=d.labels)
    fold_scores = []
    for train_idx, valid_idx in folds:
        fit_rows = train_idx[rows[train_idx]]
        if len(np.unique(d.y_train[fit_rows])) < 2:
            continue  # the first time-ordered fold trains on rows no base fold validated
        meta = fit_meta(names, [f[fit_rows] for f in oof], d.y_train[fit_rows], task, params)
        fold_scores.append(score(d.metric, d.y_train[valid_idx], meta.predict(features[valid_idx], d.n_classes or 2)))
    cv = float(np.mean(fold_scores)) if fold_scores else math.nan
    meta = fit_meta(names, [f[rows] for f in oof], d.y_train[rows], task, params)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    valid_scores = meta.predict(stack_features([bases[n].valid_scores for n in names], task), d.n_classes or 2)
    base_seconds = sum(len(d.X_valid) / b.predict_rows_per_second for b in bases.values())
    rate = len(d.X_valid) / max(time.perf_counter() - started + base_seconds, 1e-9)
    save_stacking({n: b.final_model for n, b in bases.items()}, meta, d.dataset.features, directory, labels=d.labels)
    best = {"meta": params, "bases": names, "coef": [list(r) for r in meta.coef], "intercept": list(meta.intercept)}
    result = TuningResult("stacking", best, cv, [], seconds, get_metric(d.metric).optuna_direction)
    logger.info("stacking: meta-learner over %s, coefficients %s", names, best["coef"])
    return FamilyOutcome(result, None, None, valid_scores, score(d.metric, d.y_valid, valid_scores), seconds, rate)


def log_trials(result: TuningResult, metric: str) -> None:
    """Every trial's CV value (step = trial number) in as few MLflow calls as possible (log_batch)."""
    active = mlflow.active_run()
    if active is None:
        return
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"trial_cv_{metric}", float(t["value"]), now, int(t["number"]))
        for t in result.trials
        if t["value"] is not None and math.isfinite(t["value"])
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), MLFLOW_BATCH):
        client.log_batch(active.info.run_id, metrics=metrics[start : start + MLFLOW_BATCH])


def run(ctx: StageContext) -> dict[str, Any]:
    """One child run per family: search, refit on train, score on valid, refit on train + valid, save."""
    dataset, cfg, metric = ctx.dataset, ctx.params.candidates, ctx.params.evaluate.metric
    bases = [f for f in cfg.families if not FAMILIES[f].meta]
    for family in bases:
        check_family(family, dataset.task, cfg.family(family).fixed)
    order = [*bases, *(f for f in cfg.families if FAMILIES[f].meta)]  # the meta family last, over the bases
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        train, groups, ordered = cv_design(ctx, pd.read_parquet(ctx.path(SPLITS["train"])))
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]))
        d = Design(
            dataset,
            train[dataset.features],
            encode_target(train[dataset.target], dataset),
            valid[dataset.features],
            encode_target(valid[dataset.target], dataset),
            groups,
            ordered,
            class_labels(dataset),
            metric,
            ctx.params.seed,
        )
        folds = "time-ordered" if ordered else "grouped" if groups is not None else "stratified/shuffled"
        logger.info("candidates: %s task, %s CV folds, metric %s", dataset.task, folds, metric)
        if "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL" not in os.environ:
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL)
        source = ctx.external.get(WARM_FROM, "none") if WARM_FROM in ctx.external else warm_source(ctx)
        source = None if source in (None, "none") else source
        warm = champion_params(ctx, source, bases) if source else {}
        from retrain.models.tuning import anchored_storage

        runner = ctx.params.runner
        check_storage(runner, cfg.storage)
        code = code_identity(__name__) if runner.task_runner == "dask" else None
        calls = {
            family: dict(
                family=family,
                d=d,
                cfg=cfg,
                storage_spec=anchored_storage(cfg.storage, ctx.root) if cfg.storage else None,
                study=f"{family}-{active.info.run_id}",
                warm_start=(warm[family],) if family in warm else (),
                code=code,
                runner=runner,
            )
            for family in bases
        }
        outcomes: dict[str, FamilyOutcome] = {}
        learning: dict[str, Any] = {}
        with family_runner(runner, fit_family_at, calls) as fitted:
            for family in order:
                family_tags = {**ctx.tracking.tags, "retrain.stage": ctx.stage, "retrain.family": family}
                with open_run(
                    active.info.experiment_id,  # else MLflow files the child under its default one
                    f"candidates/{family}",
                    family_tags,  # + the owner process (recovery); ends KILLED if the process is stopped
                    nested=True,
                    log_system_metrics=True,
                ):
                    if FAMILIES[family].meta:
                        directory = ctx.path(f"{CANDIDATES}/{family}")
                        outcome = fit_stacking({b: outcomes[b] for b in bases}, d, cfg, directory)
                    else:
                        outcome = fitted(family)
                        save_family(outcome, family, d, ctx.path(f"{CANDIDATES}/{family}"))
                    outcomes[family] = outcome
                    learning[family] = log_family(ctx, family, outcome, d, folds)
        summary = {family: outcome.summary() for family, outcome in outcomes.items()}
        save_valid_scores(ctx.path(VALID_SCORES), {f: o.valid_scores for f, o in outcomes.items()})
        write_json(ctx.path(LEARNING_CURVES), {f: c for f, c in learning.items() if c is not None})
        write_json(
            ctx.path(f"{CANDIDATES}/summary.json"),
            {
                "metric": metric,
                "direction": get_metric(metric).direction,
                "task": dataset.task,
                WARM_FROM: source,
                "families": _stable(summary),
            },
        )
        return finish(ctx, active, {f"valid_{metric}_{f}": s["valid_score"] for f, s in summary.items()})


def log_family(ctx: StageContext, family: str, outcome: FamilyOutcome, d: Design, folds: str) -> dict | None:
    """The family's child run: best params, CV/valid scores, timings, every trial and the diagnostics.

    Returns the family's learning curve without its timing (evaluate's DVC plot), None when it has none.
    """
    from adapters.mlflow_tracking import log_candidate_diagnostics

    result, metric = outcome.result, d.metric
    mlflow.log_params({k: str(v)[:6000] for k, v in result.best_params.items()})
    mlflow.set_tags({"retrain.task": d.dataset.task, "retrain.cv_folds": folds})
    mlflow.log_metrics(
        {
            f"cv_{metric}": result.cv_score,
            f"valid_{metric}": outcome.valid_score,
            "tuning_seconds": result.seconds,
            "fit_seconds": outcome.fit_seconds,
            "predict_rows_per_second": outcome.predict_rows_per_second,
            "n_trials": float(len(result.trials)),
            "n_pruned": float(result.n_pruned),
        }
    )
    log_trials(result, metric)
    documents: dict[str, Any] = {}
    log_candidate_diagnostics(
        ctx,
        family,
        outcome.train_model,
        d.X_train,
        d.y_train,
        d.X_valid,
        d.y_valid,
        fit_seconds=outcome.fit_seconds,
        valid_scores=outcome.valid_scores,
        documents=documents,
    )
    mlflow.log_dict({"direction": result.direction, "trials": result.trials}, "trials.json")
    logger.info("candidates: %s CV %.4f, valid %.4f", family, result.cv_score, outcome.valid_score)
    curve = documents.get("learning_curve")
    return {k: v for k, v in curve.items() if k != "seconds"} if curve else None


def save_valid_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    """Each family's valid scores from its train-only refit: evaluate calibrates and picks thresholds on them."""
    columns: dict[str, np.ndarray] = {}
    for family, values in scores.items():
        if values.ndim == 1:
            columns[family] = values
        else:
            columns |= {f"{family}:{k}": values[:, k] for k in range(values.shape[1])}
    pd.DataFrame(columns).to_parquet(path, index=False)


TIMINGS = ("tuning_seconds", "fit_seconds", "predict_rows_per_second")
"""Wall-clock fields kept out of summary.json (logged to MLflow instead)."""


def _stable(summary: dict[str, Any]) -> dict[str, Any]:
    """Drop wall-clock timings from the file so identical models give an identical summary."""
    return {family: {k: v for k, v in entry.items() if k not in TIMINGS} for family, entry in summary.items()}


STAGE = Stage(
    "candidates",
    run,
    deps=(SPLITS["train"], SPLITS["valid"]),
    outs=(CANDIDATES,),
    params=(
        "candidates",
        *DATASET_KEYS,
        "split.group_column",
        "split.time_column",
        "evaluate.metric",
        "seed",
        "runner.dask_lightgbm_min_rows",  # a LightGBM fit on Dask is not the in-process one bit for bit
    ),
    key_inputs=warm_input,
)
