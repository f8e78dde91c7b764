"""candidates: tune each model family by cross-validated search, refit the best, save it safely."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
import pandas as pd
from prefect import task

from retrain.errors import DataError
from retrain.metrics import class_labels, encode_target, get_metric, score
from retrain.models import build_model, check_family, pipeline_scores, save_model
from retrain.stages import CANDIDATES, SPLITS
from retrain.tuning import tune
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json
from tasks.tracking import log_candidate_diagnostics

logger = logging.getLogger(__name__)


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


def run(ctx: StageContext) -> dict[str, Any]:
    """One child run per family: search, refit on train, score on valid, write the model files."""
    dataset, cfg, metric = ctx.dataset, ctx.params.candidates, ctx.params.evaluate.metric
    labels = class_labels(dataset)
    n_classes = len(labels) if labels else 0
    for family in cfg.families:
        check_family(family, dataset.task, getattr(cfg, family).fixed)
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        train, groups, ordered = cv_design(ctx, pd.read_parquet(ctx.path(SPLITS["train"])))
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]))
        X_train, y_train = train[dataset.features], encode_target(train[dataset.target], dataset)
        X_valid, y_valid = valid[dataset.features], encode_target(valid[dataset.target], dataset)
        folds = "time-ordered" if ordered else "grouped" if groups is not None else "stratified/shuffled"
        logger.info("candidates: %s task, %s CV folds, metric %s", dataset.task, folds, metric)
        summary: dict[str, Any] = {}
        for family in cfg.families:
            family_tags = {**ctx.tracking.tags, "retrain.stage": ctx.stage, "retrain.family": family}
            with mlflow.start_run(run_name=f"candidates/{family}", nested=True, tags=family_tags):
                result = tune(
                    family,
                    getattr(cfg, family),
                    X_train,
                    y_train,
                    numeric=dataset.numeric,
                    categorical=dataset.categorical,
                    metric=metric,
                    n_trials=cfg.n_trials,
                    n_folds=cfg.cv_folds,
                    seed=ctx.params.seed,
                    task=dataset.task,
                    labels=labels,
                    groups=groups,
                    ordered=ordered,
                )
                started = time.perf_counter()
                model = build_model(family, result.best_params, dataset.numeric, dataset.categorical, task=dataset.task)
                model.fit(X_train, y_train)
                fit_seconds = time.perf_counter() - started
                valid_score = score(metric, y_valid, pipeline_scores(model, X_valid, dataset.task, n_classes))
                save_model(
                    model,
                    family,
                    dataset.features,
                    ctx.path(f"{CANDIDATES}/{family}"),
                    task=dataset.task,
                    labels=labels,
                )
                mlflow.log_params({k: str(v) for k, v in result.best_params.items()})
                mlflow.set_tags({"retrain.task": dataset.task, "retrain.cv_folds": folds})
                mlflow.log_metrics(
                    {
                        f"cv_{metric}": result.cv_score,
                        f"valid_{metric}": valid_score,
                        "tuning_seconds": result.seconds,
                        "fit_seconds": fit_seconds,
                    }
                )
                mlflow.log_dict({"direction": result.direction, "trials": result.trials}, "trials.json")
                log_candidate_diagnostics(
                    ctx, family, model, X_train, y_train, X_valid, y_valid, fit_seconds=fit_seconds
                )
                summary[family] = {
                    "cv_score": result.cv_score,
                    "valid_score": valid_score,
                    "best_params": result.best_params,
                    "n_trials": len(result.trials),
                    "tuning_seconds": round(result.seconds, 3),
                }
                logger.info("candidates: %s CV %.4f, valid %.4f", family, result.cv_score, valid_score)
        write_json(
            ctx.path(f"{CANDIDATES}/summary.json"),
            {
                "metric": metric,
                "direction": get_metric(metric).direction,
                "task": dataset.task,
                "families": _stable(summary),
            },
        )
        return finish(ctx, active, {f"valid_{metric}_{f}": s["valid_score"] for f, s in summary.items()})


def _stable(summary: dict[str, Any]) -> dict[str, Any]:
    """Drop wall-clock timings from the file so identical models give an identical summary."""
    return {family: {k: v for k, v in entry.items() if k != "tuning_seconds"} for family, entry in summary.items()}


candidates_task = task(run, name="candidates")
