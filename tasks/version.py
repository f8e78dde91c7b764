"""version: put the snapshot in the DVC cache, push it to the DVC remote, record its hash."""

from __future__ import annotations

from typing import Any

import mlflow
from prefect import task

from retrain.stages import SNAPSHOT, VERSION
from tasks import dvcstore
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json


def run(ctx: StageContext) -> dict[str, Any]:
    """Version the snapshot by content: the md5 every later run and model version is tagged with."""
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        snapshot = ctx.path(SNAPSHOT)
        md5 = dvcstore.add_to_cache(ctx.root, snapshot)
        remote_url = dvcstore.push(ctx.root, md5, ctx.params.version.remote)
        record = {
            "path": SNAPSHOT,
            "md5": md5,
            "bytes": snapshot.stat().st_size,
            "remote": ctx.params.version.remote or "default",
        }
        write_json(ctx.path(VERSION), record)
        mlflow.set_tags({"retrain.data_hash": md5, "retrain.dvc_remote": remote_url})
        return finish(ctx, active, data_hash=md5, remote_url=remote_url)


version_task = task(run, name="version")
