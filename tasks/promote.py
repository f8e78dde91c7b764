"""promote: register a gated candidate and point `champion` at it, only if every gate passed.

Never cached (it has side effects) and idempotent: a model already registered with the same content
hash is not registered again, and an alias already in place is not moved.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import pandas as pd
from filelock import FileLock
from mlflow.tracking import MlflowClient
from prefect import task

from retrain.stages import GATE_RECORD, PROMOTION, SPLITS
from tasks import registry
from tasks.packaging import pyfunc_kwargs
from tasks.runtime import StageContext, finish, read_json, stage_run, write_json
from tasks.version import version_tags

logger = logging.getLogger(__name__)



class PromotionRefusedError(RuntimeError):
    """The champion moved between evaluation and promotion (compare-and-set failed)."""


def log_and_register(ctx: StageContext, record: dict[str, Any], client: MlflowClient) -> str:
    """Log the candidate as a models-from-code pyfunc and register it with lineage tags."""
    dataset = ctx.dataset
    model_dir = ctx.path(record["candidate"]["model_dir"])
    example = pd.read_parquet(ctx.path(SPLITS["valid"]), columns=dataset.features).head(5)
    info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(ctx.root, model_dir, example))
    tags = {
        registry.MODEL_HASH_TAG: record["candidate"]["model_hash"],
        "retrain.data_hash": str(record["data_hash"]),
        "retrain.git_commit": str(record["git_commit"]),
        "retrain.params_hash": str(record["params_hash"]),
        "retrain.family": record["candidate"]["family"],
        "retrain.task": str(record.get("task", dataset.task)),
        "retrain.metric": f"{record['metric']} ({record.get('direction', 'higher_is_better')})",
        "retrain.gate_decision": record["decision"],
        "retrain.gate_record": f"runs:/{mlflow.active_run().info.run_id}/gate_record.json",
    }
    tags |= {k: v for k, v in version_tags(ctx.root).items() if k.startswith("retrain.dvc_remote")}
    version = mlflow.register_model(info.model_uri, ctx.params.promote.model_name, tags=tags)
    summary = "; ".join(f"{g['name']}: {'pass' if g['passed'] else 'FAIL'}" for g in record["gates"])
    client.update_model_version(ctx.params.promote.model_name, version.version, description=f"gates: {summary}")
    return str(version.version)


def run(ctx: StageContext) -> dict[str, Any]:
    """Register and move the alias under a lock, refusing if the champion moved since evaluation."""
    name, alias = ctx.params.promote.model_name, ctx.params.promote.alias
    record = read_json(ctx.path(GATE_RECORD))
    client = MlflowClient(ctx.tracking.tracking_uri)
    with stage_run(ctx) as active:
        mlflow.log_dict(record, "gate_record.json")
        lock = FileLock(str(ctx.root / ".retrain" / "registry.lock"))
        with lock:
            current = registry.champion(ctx.tracking.tracking_uri, name, alias)
            if record["decision"] != "promote":
                action = "rejected"
                version = None
                logger.warning(
                    "promote: candidate rejected by gates %s; %s left unchanged", record["failed_gates"], alias
                )
            else:
                seen = (record.get("champion") or {}).get("version")
                now = (current or {}).get("version")
                if now != seen and not (current and current.get("model_hash") == record["candidate"]["model_hash"]):
                    raise PromotionRefusedError(
                        f"promote: {alias} moved from version {seen} to {now} since evaluation; refusing"
                    )
                version = registry.find_version(client, name, record["candidate"]["model_hash"])
                action = "already_champion" if version is not None and version == now else "promoted"
                if version is None:
                    version = log_and_register(ctx, record, client)
                    logger.info("promote: registered %s version %s", name, version)
                if version != now:
                    client.set_registered_model_alias(name, alias, version)
                    logger.info("promote: %s -> %s version %s (was %s)", alias, name, version, now)
                current = registry.champion(ctx.tracking.tracking_uri, name, alias)
        promotion = {
            "decision": record["decision"],
            "failed_gates": record["failed_gates"],
            "model_name": name,
            "version": version,
            "champion_version": (current or {}).get("version"),
            "model_hash": record["candidate"]["model_hash"],
        }
        write_json(ctx.path(PROMOTION), promotion)
        mlflow.set_tag("retrain.promotion", action)
        return finish(ctx, active, action=action, version=version, champion_version=promotion["champion_version"])


promote_task = task(run, name="promote")
