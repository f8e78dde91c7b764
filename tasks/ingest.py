"""ingest: parse the declared sources into one Parquet snapshot."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from prefect import task

from retrain import schema
from retrain.config import Params
from retrain.ingest import SOURCE_COLUMN, ingest
from retrain.stages import SCHEMA, SNAPSHOT
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json

logger = logging.getLogger(__name__)


def split_columns(params: Params) -> tuple[str, ...]:
    """Columns kept in the snapshot for the split (group / time) that are not features."""
    return tuple(c for c in (params.split.group_column, params.split.time_column) if c)


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
        declared = ctx.params.dataset
        main = snapshot[snapshot[SOURCE_COLUMN] == "main"]
        effective = schema.resolve(declared, main, keep=split_columns(ctx.params))
        write_json(ctx.path(SCHEMA), schema.to_json(declared, effective))
        mlflow.log_dict(schema.to_json(declared, effective), "schema.json")
        result = finish(ctx, active, {"rows": float(len(snapshot)), "columns": float(snapshot.shape[1])})
        mlflow.set_tag("retrain.data_hash", result["outs"][SNAPSHOT])
        mlflow.log_params({f"source.{k}": str(v) for k, v in sources.items()})
        return result


ingest_task = task(run, name="ingest")
