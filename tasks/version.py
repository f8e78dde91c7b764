"""version: put the snapshot in the local DVC cache, record its hash and the remote it goes to.

The push to that remote waits for the data gate: `validate` pushes a snapshot once it passed, so a rejected
snapshot never reaches the remote (docs/data.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from adapters import dvc_store as dvcstore
from adapters.jsonfile import read_json, write_json
from engine.context import StageContext, clear_outputs, finish, stage_run
from engine.stage import Stage
from retrain.catalog import SNAPSHOT, VERSION


def run(ctx: StageContext) -> dict[str, Any]:
    """Version the snapshot by content: the md5 every later run and model version is tagged with."""
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        snapshot = ctx.path(SNAPSHOT)
        remote = dvcstore.remote_info(ctx.root, ctx.params.version.remote)
        md5 = dvcstore.add_to_cache(ctx.root, snapshot)
        record = {
            "path": SNAPSHOT,
            "md5": md5,
            "bytes": snapshot.stat().st_size,
            "remote": {"name": remote.name, "url": remote.portable(ctx.root)},
        }
        write_json(ctx.path(VERSION), record)
        mlflow.set_tags({"retrain.data_hash": md5, **remote.tags()})
        return finish(ctx, active, data_hash=md5, remote=remote.name, remote_url=remote.url)


def version_tags(root: Path) -> dict[str, str]:
    """Lineage tags from the version record (data/raw/version.json): data hash and the remote holding it.

    Empty when the version stage has not run yet, so callers can merge it unconditionally.
    """
    path = root / VERSION
    if not path.exists():
        return {}
    record = read_json(path)
    remote = record.get("remote")
    tags = {"retrain.data_hash": str(record["md5"])}
    if isinstance(remote, dict):
        tags |= dvcstore.Remote(str(remote["name"]), dvcstore.absolute_url(root, str(remote["url"]))).tags()
    return tags


STAGE = Stage(
    "version",
    run,
    deps=(SNAPSHOT,),
    outs=(VERSION,),
    params=("version.remote",),
    tags=lambda root, outs: version_tags(root),
)
