"""baselines: fit the non-ML reference models every candidate must beat."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from prefect import task

from retrain.baselines import fit_baselines
from retrain.config import DatasetConfig
from retrain.errors import DataError
from retrain.metrics import class_labels, encode_target, get_metric, score
from retrain.stages import BASELINES, SPLITS
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json

logger = logging.getLogger(__name__)


def heuristic_spec(ctx: StageContext, train: pd.DataFrame) -> tuple[str, pd.Series, float | None] | None:
    """(column, train values, threshold) of the configured heuristic; numeric without threshold: the median."""
    cfg = ctx.params.baselines.heuristic
    if cfg is None or "heuristic" not in ctx.params.baselines.strategies:
        return None
    dataset: DatasetConfig = ctx.dataset
    if cfg.column not in dataset.features:
        raise DataError(
            f"baselines: baselines.heuristic.column {cfg.column!r} is not a feature of {SPLITS['train']} "
            f"(features: {dataset.features})"
        )
    if cfg.column in dataset.categorical:
        if cfg.threshold is not None:
            raise DataError(
                f"baselines: baselines.heuristic.threshold {cfg.threshold} set on categorical column {cfg.column!r}"
            )
        return cfg.column, train[cfg.column], None
    values = pd.to_numeric(train[cfg.column], errors="coerce")
    threshold = cfg.threshold if cfg.threshold is not None else float(values.median())
    return cfg.column, train[cfg.column], threshold


def run(ctx: StageContext) -> dict[str, Any]:
    """Fit on train, score on valid, store as JSON (re-scored on test by evaluate)."""
    dataset = ctx.dataset
    heuristic = ctx.params.baselines.heuristic
    extra = [heuristic.column] if heuristic is not None and heuristic.column != dataset.target else []
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        columns = [dataset.target, *[c for c in extra if c in dataset.features]]
        train = pd.read_parquet(ctx.path(SPLITS["train"]), columns=columns)
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]), columns=columns)
        y_train = encode_target(train[dataset.target], dataset)
        y_valid = encode_target(valid[dataset.target], dataset)
        labels = class_labels(dataset)
        fitted = fit_baselines(
            y_train,
            ctx.params.baselines.strategies,
            ctx.params.seed,
            task=dataset.task,
            n_classes=len(labels) if labels else 0,
            heuristic=heuristic_spec(ctx, train),
        )
        metric = ctx.params.evaluate.metric
        scores = {b.strategy: score(metric, y_valid, b.predict_scores(valid)) for b in fitted}
        for name, value in scores.items():
            logger.info("baselines: %s valid %s %.4f", name, metric, value)
        write_json(
            ctx.path(BASELINES),
            {
                "task": dataset.task,
                "labels": labels,
                "metric": metric,
                "direction": get_metric(metric).direction,
                "baselines": [b.to_dict() for b in fitted],
                "valid_scores": scores,
            },
        )
        return finish(ctx, active, {f"valid_{metric}_{k}": v for k, v in scores.items()})


baselines_task = task(run, name="baselines")
