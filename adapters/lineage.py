"""Restore the exact data a registered model was trained on: registry tags -> DVC remote -> hash-checked file."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adapters import dvc_store as dvcstore
from adapters.jsonfile import write_json
from adapters.model_store import MANIFEST_TAG, verified_version
from retrain.errors import ConfigError

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = "snapshot.parquet"
LINEAGE_NAME = "lineage.json"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version named by alias (`name@alias`) or number (`name/3`)."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def parse_model_ref(text: str) -> ModelRef:
    """`MODEL@ALIAS`, `MODEL/VERSION`, or the same as a `models:/` URI."""
    ref = text.strip().removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return ModelRef(name, alias=alias)
    elif "/" in ref:
        name, number = ref.rsplit("/", 1)
        if name and re.fullmatch(r"\d+", number):
            return ModelRef(name, version=number)
    raise ConfigError(f"model reference {text!r}: give MODEL@ALIAS, MODEL/VERSION or models:/MODEL@ALIAS")


def find_version(client: MlflowClient, ref: ModelRef, tracking_uri: str) -> ModelVersion:
    """The registry entry the reference names; ConfigError (exit 2) saying what does not exist."""
    try:
        model = client.get_registered_model(ref.name)
    except MlflowException as exc:
        raise ConfigError(f"model {ref.name!r} is not registered in the MLflow registry at {tracking_uri}") from exc
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:
        if ref.alias:
            known = dict(model.aliases or {})
            raise ConfigError(f"model {ref.name!r} has no alias {ref.alias!r} (aliases: {known or 'none'})") from exc
        raise ConfigError(f"model {ref.name!r} has no version {ref.version}") from exc


def snapshot_rows(path: Path) -> int:
    """Row count from the Parquet footer (no data read)."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def restore(root: Path, tracking_uri: str, ref: ModelRef, dest_dir: Path, remote: str | None = None) -> dict[str, Any]:
    """Fetch the snapshot a model version was trained on into dest_dir and write its lineage record.

    The version's model artifact is verified against the registry first (`adapters.model_store`): a tampered
    version is refused before any of its tags is used. The object comes from the local DVC cache if present,
    else from the DVC remote; its md5 must equal the version's `retrain.data_hash` tag
    (dvcstore.HashMismatchError otherwise, nothing written).
    """
    client = MlflowClient(tracking_uri)
    version = find_version(client, ref, tracking_uri)
    with verified_version(tracking_uri, ref.name, str(version.version)):
        pass  # a tampered version (ArtifactIntegrityError) is not trusted with its lineage either
    tags = dict(version.tags or {})
    md5 = tags.get("retrain.data_hash")
    if not md5:
        raise ConfigError(f"{ref} (version {version.version}) has no retrain.data_hash tag: no data lineage to restore")
    recorded = tags.get("retrain.dvc_remote")
    chosen = remote or recorded
    if chosen:
        try:
            dvcstore.remote_info(root, chosen)
        except ConfigError as exc:
            url = tags.get("retrain.dvc_remote_url", "?")
            raise ConfigError(
                f"{exc}; the version was pushed to {recorded!r} ({url}): `dvc remote add {recorded} {url}` "
                "or pass --remote NAME"
            ) from exc
    used = dvcstore.remote_info(root, chosen)
    dest_dir.mkdir(parents=True, exist_ok=True)
    snapshot = dest_dir / SNAPSHOT_NAME
    origin = dvcstore.fetch(root, md5, snapshot, used.name)
    lineage = {
        "model": ref.name,
        "version": str(version.version),
        "alias": ref.alias,
        "data_hash": md5,
        "snapshot": SNAPSHOT_NAME,
        "bytes": snapshot.stat().st_size,
        "rows": snapshot_rows(snapshot),
        "fetched_from": "local DVC cache" if origin == "cache" else f"DVC remote {used.name}",
        "dvc_remote": {"name": used.name, "url": used.url},
        "recorded_remote": {"name": recorded, "url": tags.get("retrain.dvc_remote_url")},
        "git_commit": tags.get("retrain.git_commit"),
        "params_hash": tags.get("retrain.params_hash"),
        "model_hash": tags.get("retrain.model_hash"),
        "manifest_sha256": tags.get(MANIFEST_TAG),
        "tracking_uri": tracking_uri,
        "restored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(dest_dir / LINEAGE_NAME, lineage)
    logger.info("restored %s version %s data %s from the %s", ref.name, version.version, md5, lineage["fetched_from"])
    return lineage


def summary_lines(lineage: dict[str, Any], dest_dir: Path) -> list[str]:
    """What `retrain data restore` prints."""
    alias = f" (alias {lineage['alias']})" if lineage["alias"] else ""
    remote = lineage["dvc_remote"]
    return [
        f"restored {lineage['model']} version {lineage['version']}{alias}",
        f"  model     artifact verified against the registry (manifest sha256 {lineage['manifest_sha256']})",
        f"  data      {lineage['data_hash']}  md5 verified",
        f"  snapshot  {dest_dir / SNAPSHOT_NAME}  ({lineage['rows']:,} rows, {lineage['bytes']:,} bytes)",
        f"  from      {lineage['fetched_from']}  (remote {remote['name']}: {remote['url']})",
        f"  git       {lineage['git_commit']}",
        f"  params    {lineage['params_hash']}",
        f"  lineage   {dest_dir / LINEAGE_NAME}",
    ]
