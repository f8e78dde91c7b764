"""ingest: parse the declared sources into one Parquet snapshot."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from prefect import task

from retrain.ingest import ingest
from retrain.stages import SNAPSHOT
from tasks.runtime import StageContext, clear_outputs, finish, stage_run

logger = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    """Read every declared source and write the snapshot atomically."""
    cfg = ctx.params.ingest
    sources = {"main": ctx.path(cfg.source)}
    if cfg.test_source:
        sources["test"] = ctx.path(cfg.test_source)
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        snapshot = ingest(sources, cfg, ctx.params.dataset, ctx.params.seed)
        out = ctx.path(SNAPSHOT)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        snapshot.to_parquet(tmp, index=False)
        tmp.replace(out)
        result = finish(ctx, active, {"rows": float(len(snapshot)), "columns": float(snapshot.shape[1])})
        mlflow.set_tag("retrain.data_hash", result["outs"][SNAPSHOT])
        mlflow.log_params({f"source.{k}": str(v) for k, v in sources.items()})
        return result


ingest_task = task(run, name="ingest")
