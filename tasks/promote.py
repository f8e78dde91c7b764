"""promote: register a gated candidate as `challenger`, then move `champion` to it by compare-and-set.

Never cached (it has side effects) and idempotent: a model already registered with the same content
hash is not registered again, and an alias already in place is not moved. Every alias move is appended
to the audit log (adapters/mlflow_audit.py) inside the registry lock. With `ctx.dry_run` it only reports
what it would do.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from adapters import mlflow_audit as audit
from adapters import mlflow_registry as registry
from adapters.jsonfile import read_json, write_json
from adapters.mlflow_packaging import pyfunc_kwargs
from engine.context import StageContext, finish, stage_run
from engine.stage import Stage
from retrain.catalog import EVALUATE, GATE_RECORD, PROMOTE_METRICS, PROMOTION, SPLITS
from retrain.errors import ConfigError
from retrain.evaluation.reports import promotion_metrics
from tasks.version import version_tags

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
MODEL_CARD = "model_card.html"
EXPERIMENT_ENV = "DVC_EXP_NAME"
"""Set by `dvc exp run` in every stage's environment (with DVC_EXP_BASELINE_REV); unset under plain `dvc repro`."""
BASELINE_ENV = "DVC_EXP_BASELINE_REV"


def dvc_experiment() -> dict[str, str] | None:
    """The DVC experiment this stage runs in (name and baseline commit), or None outside `dvc exp run`."""
    name = os.environ.get(EXPERIMENT_ENV)
    return {"name": name, "baseline": os.environ.get(BASELINE_ENV, "")} if name else None


def gate_line(gate: dict[str, Any]) -> str:
    """`name: pass|fail|skipped` for the version description."""
    status = gate.get("status") or ("pass" if gate.get("passed") else "fail")
    return f"{gate['name']}: {status}"


def log_and_register(ctx: StageContext, record: dict[str, Any], client: MlflowClient, uris: dict[str, str]) -> str:
    """Log the candidate as a models-from-code pyfunc and register it with lineage and gate-record tags."""
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
        **uris,
    }
    tags |= {k: v for k, v in version_tags(ctx.root).items() if k.startswith("retrain.dvc_remote")}
    version = mlflow.register_model(info.model_uri, ctx.params.promote.model_name, tags=tags)
    summary = "; ".join(gate_line(g) for g in record["gates"])
    client.update_model_version(ctx.params.promote.model_name, version.version, description=f"gates: {summary}")
    return str(version.version)


def log_record(ctx: StageContext, record: dict[str, Any], run_id: str) -> dict[str, str]:
    """Log the gate record (and the model card when evaluate wrote one) to this run; their runs:/ URIs as tags."""
    mlflow.log_dict(record, "gate_record.json")
    uris = {"retrain.gate_record": f"runs:/{run_id}/gate_record.json"}
    card = ctx.path(GATE_RECORD).parent / MODEL_CARD
    if card.is_file():
        mlflow.log_artifact(str(card))
        uris["retrain.model_card"] = f"runs:/{run_id}/{MODEL_CARD}"
    return uris


def dry_run(ctx: StageContext, record: dict[str, Any], client: MlflowClient) -> dict[str, Any]:
    """What promotion would do, touching neither the registry nor any alias."""
    name, alias = ctx.params.promote.model_name, ctx.params.promote.alias
    family = record["candidate"]["family"]
    now = registry.alias_version(client, name, alias) if _model_exists(client, name) else None
    seen = (record.get("champion") or {}).get("version")
    if record["decision"] != "promote":
        action, message = "would_reject", f"would reject: {', '.join(record['failed_gates']) or 'no gate named'}"
    else:
        existing = registry.find_version(client, name, record["candidate"]["model_hash"])
        target = f"existing version {existing}" if existing else "a new version"
        if existing is not None and existing == now:
            action, message = "would_keep", f"would keep {alias}: {family} is already {name} version {now}"
        elif now != seen:
            action = "would_refuse"
            message = f"would refuse: {alias} moved from version {seen} to {now} since evaluation"
        else:
            action = "would_promote"
            message = f"would promote {target} of {family} to {CHALLENGER} and {alias} (now version {now})"
    logger.warning("promote (dry run): %s; nothing registered, no alias moved", message)
    challenger = registry.alias_version(client, name, CHALLENGER) if _model_exists(client, name) else None
    return {"action": action, "message": message, "champion_version": now, "challenger_version": challenger}


def _model_exists(client: MlflowClient, name: str) -> bool:
    """Whether the registered model exists (a first run has none)."""
    try:
        registry.require_model(client, name)
    except ConfigError:
        return False
    return True


def promote(ctx: StageContext, record: dict[str, Any], client: MlflowClient, uris: dict[str, str]) -> dict[str, Any]:
    """Under the registry lock: register, set challenger, then compare-and-set champion; audit each move."""
    name, alias = ctx.params.promote.model_name, ctx.params.promote.alias
    trigger = ctx.tracking.tags.get("retrain.trigger", "cli")
    run_id = mlflow.active_run().info.run_id
    written: list[dict[str, Any]] = []

    def move(which: str, before: str | None, to: str, gate_record: str | None) -> None:
        """Point an alias and append its audit entry (still under the lock)."""
        client.set_registered_model_alias(name, which, to)
        logger.info("promote: %s@%s %s -> %s", name, which, before, to)
        written.append(
            audit.append(
                ctx.tracking.tracking_uri,
                name,
                which,
                before,
                to,
                gate_record=gate_record,
                decision=record["decision"],
                failed_gates=record["failed_gates"],
                trigger=trigger,
                run_id=run_id,
            )
        )

    with registry.registry_lock(ctx.root):
        version = registry.find_version(client, name, record["candidate"]["model_hash"])
        if version is None:
            version = log_and_register(ctx, record, client, uris)
            logger.info("promote: registered %s version %s", name, version)
        gate_uri = uris["retrain.gate_record"]  # the record that justified this move (this run's)
        challenger = registry.alias_version(client, name, CHALLENGER)
        if challenger != version:
            move(CHALLENGER, challenger, version, gate_uri)
        now = registry.alias_version(client, name, alias)  # compare-and-set: re-read under the lock
        seen = (record.get("champion") or {}).get("version")
        message = ""
        if now == version:
            action = "already_champion"
        elif now != seen:
            action = "refused"
            message = (
                f"promote: REFUSED: {alias} moved from version {seen} (seen by evaluate) to {now} since "
                f"evaluation; {alias} left at {now}, version {version} kept as {CHALLENGER}; "
                "re-run to evaluate against the new champion"
            )
            logger.error("%s", message)
        else:
            move(alias, now, version, gate_uri)
            action = "promoted"
        champion = registry.alias_version(client, name, alias)
    return {
        "action": action,
        "message": message,
        "version": version,
        "challenger_version": version,
        "champion_version": champion,
        "audit": written,
    }


def write_promotion(ctx: StageContext, record: dict[str, Any], outcome: dict[str, Any], experiment: str | None) -> None:
    """promotion.json (the full outcome) and its small metrics file (what `dvc exp show` lists)."""
    promotion = {
        "decision": record["decision"],
        "failed_gates": record["failed_gates"],
        "model_name": ctx.params.promote.model_name,
        "model_hash": record["candidate"]["model_hash"],
        **({"experiment": experiment} if experiment else {}),
        **outcome,
    }
    write_json(ctx.path(PROMOTION), promotion)
    write_json(ctx.path(PROMOTE_METRICS), promotion_metrics(promotion, experiment))


def in_experiment(ctx: StageContext, record: dict[str, Any], client: MlflowClient, exp: dict[str, str]) -> dict:
    """Inside `dvc exp run`: never touch the registry; record what promotion would do, so the experiment is saved."""
    outcome = dry_run(ctx, record, client) | {"version": None, "audit": []}
    mlflow.set_tags({"retrain.dvc_experiment": exp["name"], "retrain.dvc_baseline_rev": exp["baseline"]})
    write_promotion(ctx, record, outcome, exp["name"])
    ship = f"; to ship it: `dvc exp apply {exp['name']}`, then `retrain run`" if record["decision"] == "promote" else ""
    logger.warning(
        "promote: DVC experiment %s (baseline %s): registry untouched; decision %s, %s%s",
        exp["name"], exp["baseline"][:7], record["decision"], outcome["action"], ship,
    )  # fmt: skip
    return outcome


def run(ctx: StageContext) -> dict[str, Any]:
    """Promote a candidate whose gate record says so; report (and change nothing) for a reject or a dry run.

    Inside a DVC experiment promote behaves like a dry run and writes what it would do to promotion.json.
    """
    name, alias = ctx.params.promote.model_name, ctx.params.promote.alias
    record = read_json(ctx.path(GATE_RECORD))
    client = MlflowClient(ctx.tracking.tracking_uri)
    experiment = dvc_experiment()
    with stage_run(ctx) as active:
        uris = log_record(ctx, record, active.info.run_id)
        if ctx.dry_run or experiment:
            if experiment:
                outcome = in_experiment(ctx, record, client, experiment)
            else:
                outcome = dry_run(ctx, record, client) | {"version": None, "audit": []}
            mlflow.set_tag("retrain.promotion", outcome["action"])
            mlflow.set_tag("retrain.dry_run", "true")
            where = {"experiment": experiment["name"]} if experiment else {}
            return finish(ctx, active, dry_run=True, **where, **outcome)
        if record["decision"] != "promote":
            exists = _model_exists(client, name)
            champion = registry.alias_version(client, name, alias) if exists else None
            message = f"candidate rejected by gates {', '.join(record['failed_gates'])}; {alias} left at {champion}"
            logger.warning("promote: %s", message)
            outcome = {
                "action": "rejected",
                "message": message,
                "version": None,
                "challenger_version": registry.alias_version(client, name, CHALLENGER) if exists else None,
                "champion_version": champion,
                "audit": [],
            }
        else:
            outcome = promote(ctx, record, client, uris)
        write_promotion(ctx, record, outcome, None)
        mlflow.set_tag("retrain.promotion", outcome["action"])
        return finish(ctx, active, dry_run=False, **outcome)


STAGE = Stage(
    "promote",
    run,
    deps=(EVALUATE,),
    outs=(PROMOTION,),
    params=("promote.model_name", "promote.alias"),
    cache=False,
    metrics=(PROMOTE_METRICS,),
)
