"""baselines: fit the non-ML reference models every candidate must beat."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task

from retrain.baselines import fit_baselines
from retrain.metrics import class_labels, encode_target, get_metric, score
from retrain.stages import BASELINES, SPLITS
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json


def run(ctx: StageContext) -> dict[str, Any]:
    """Fit on train, score on valid, store as JSON (re-scored on test by evaluate)."""
    dataset = ctx.dataset
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        train = pd.read_parquet(ctx.path(SPLITS["train"]), columns=[dataset.target])
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]), columns=[dataset.target])
        y_train = encode_target(train[dataset.target], dataset)
        y_valid = encode_target(valid[dataset.target], dataset)
        labels = class_labels(dataset)
        fitted = fit_baselines(
            y_train,
            ctx.params.baselines.strategies,
            ctx.params.seed,
            task=dataset.task,
            n_classes=len(labels) if labels else 0,
        )
        metric = ctx.params.evaluate.metric
        scores = {b.strategy: score(metric, y_valid, b.predict_scores(len(y_valid))) for b in fitted}
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
