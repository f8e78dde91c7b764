"""ingest: parse the declared sources (file, glob of batches, SQL query) into one Parquet snapshot."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from pydantic import ValidationError

from adapters.dvc_store import file_md5
from adapters.jsonfile import write_json
from engine.context import StageContext, clear_outputs, finish, stage_run
from engine.stage import Stage
from retrain.catalog import DATASET_KEYS, SCHEMA, SNAPSHOT
from retrain.config import Params
from retrain.data import schema
from retrain.data.ingest import ingest, main_rows
from retrain.data.sources import Source, display, parse_source
from retrain.errors import DataError

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
            main = main_rows(snapshot)
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


def data_hash_tag(root: Path, outs: Mapping[str, str] | None) -> dict[str, str]:
    """The snapshot's md5: the data version every later run and the model version carry."""
    if outs is not None:
        return {"retrain.data_hash": outs[SNAPSHOT]}
    snapshot = root / SNAPSHOT
    return {"retrain.data_hash": file_md5(snapshot)} if snapshot.exists() else {}


STAGE = Stage(
    "ingest",
    run,
    deps=("${ingest.source}", "${ingest.test_source}"),
    outs=(SNAPSHOT, SCHEMA),
    params=("ingest", *DATASET_KEYS, "split.group_column", "split.time_column", "seed"),
    tags=data_hash_tag,
    sources={"${ingest.source}": "ingest.query", "${ingest.test_source}": "ingest.test_query"},
)
