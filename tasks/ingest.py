"""ingest: parse the declared sources (file, glob of batches, SQL query) into one Parquet snapshot."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from prefect import task
from pydantic import ValidationError

from retrain import schema
from retrain.config import Params
from retrain.errors import DataError
from retrain.ingest import SOURCE_COLUMN, ingest
from retrain.sources import Source, display, parse_source
from retrain.stages import SCHEMA, SNAPSHOT
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json

logger = logging.getLogger(__name__)


def declared_sources(params: Params) -> dict[str, Source]:
    """The main source and, if declared, the test source, each with its query when it is a database."""
    cfg = params.ingest
    sources = {"main": parse_source(cfg.source, cfg.query)}
    if cfg.test_source:
        sources["test"] = parse_source(cfg.test_source, cfg.test_query)
    return sources


def run(ctx: StageContext) -> dict[str, Any]:
    """Read every declared source, resolve the schema, then write snapshot and schema atomically."""
    cfg = ctx.params.ingest
    sources = declared_sources(ctx.params)
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        try:
            keep = ctx.params.split.extra_columns
            result = ingest(sources, ctx.root, cfg, ctx.params.dataset, ctx.params.seed, keep=keep)
            snapshot = result.snapshot
            declared = ctx.params.dataset
            main = snapshot[snapshot[SOURCE_COLUMN] == "main"]
            try:
                effective = schema.resolve(declared, main, keep=ctx.params.split.extra_columns)
            except ValidationError as exc:
                problems = "; ".join(e["msg"] for e in exc.errors())
                raise DataError(
                    f"{display(cfg.source)}: the schema inferred from the data does not fit params: {problems}"
                ) from exc
            out = ctx.path(SNAPSHOT)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            try:
                snapshot.to_parquet(tmp, index=False)
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
            write_json(ctx.path(SCHEMA), schema.to_json(declared, effective))
        except BaseException:
            clear_outputs(ctx)
            raise
        mlflow.log_dict(schema.to_json(declared, effective), "schema.json")
        mlflow.log_dict({"sources": result.provenance}, "sources.json")
        mlflow.log_params({f"source.{name}": display(src.spec)[:500] for name, src in sources.items()})
        result_record = finish(
            ctx,
            active,
            {"rows": float(len(snapshot)), "columns": float(snapshot.shape[1]), "files": float(len(result.provenance))},
        )
        mlflow.set_tag("retrain.data_hash", result_record["outs"][SNAPSHOT])
        return result_record


ingest_task = task(run, name="ingest")
