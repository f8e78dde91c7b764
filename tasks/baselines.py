"""baselines: fit the non-ML reference models every candidate must beat."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from adapters.jsonfile import write_json
from engine.context import StageContext, clear_outputs, finish, stage_run
from engine.stage import Stage
from retrain.catalog import BASELINES, DATASET_KEYS, SPLITS
from retrain.models.baselines import baselines_record, input_columns

logger = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    """Fit on train, score on valid, store as JSON (re-scored on test by evaluate)."""
    dataset, cfg = ctx.dataset, ctx.params.baselines
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        columns = input_columns(dataset, cfg)
        train = pd.read_parquet(ctx.path(SPLITS["train"]), columns=columns)
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]), columns=columns)
        metric = ctx.params.evaluate.metric
        record = baselines_record(train, valid, dataset, cfg, metric, ctx.params.seed, SPLITS["train"])
        for name, value in record["valid_scores"].items():
            logger.info("baselines: %s valid %s %.4f", name, metric, value)
        write_json(ctx.path(BASELINES), record)
        return finish(ctx, active, {f"valid_{metric}_{k}": v for k, v in record["valid_scores"].items()})


STAGE = Stage(
    "baselines",
    run,
    deps=(SPLITS["train"], SPLITS["valid"]),
    outs=(BASELINES,),
    params=("baselines", *DATASET_KEYS, "evaluate.metric", "seed"),
)
