"""split: write train / valid / test Parquet files with no row in two splits."""

from __future__ import annotations

from typing import Any

import pandas as pd

from engine.context import StageContext, clear_outputs, finish, stage_run
from engine.stage import Stage
from retrain.catalog import DATASET_KEYS, SCHEMA, SNAPSHOT, SPLITS, VALIDATION


def run(ctx: StageContext) -> dict[str, Any]:
    """Split the validated snapshot."""
    from retrain.data.split import split_snapshot

    clear_outputs(ctx)
    with stage_run(ctx) as active:
        snapshot = pd.read_parquet(ctx.path(SNAPSHOT))
        parts = split_snapshot(snapshot, ctx.params.split, ctx.dataset, ctx.params.seed)
        for name, frame in parts.items():
            path = ctx.path(SPLITS[name])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            frame.to_parquet(tmp, index=False)
            tmp.replace(path)
        return finish(ctx, active, {f"rows_{name}": float(len(frame)) for name, frame in parts.items()})


STAGE = Stage(
    "split",
    run,
    deps=(SNAPSHOT, SCHEMA, VALIDATION),
    outs=tuple(SPLITS.values()),
    params=("split", *DATASET_KEYS, "seed"),
)
