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
from adapters import model_store
from adapters.jsonfile import read_json, write_json
from adapters.mlflow_packaging import artifact_model_dir, log_pyfunc
from engine.context import StageContext, finish, stage_run
from engine.stage import Stage
from retrain.catalog import EVALUATE, GATE_RECORD, PROMOTE_METRICS, PROMOTION, SPLITS
from retrain.errors import ConfigError
from retrain.evaluation.recompare import lost_line
from retrain.evaluation.reports import promotion_metrics
from tasks.version import version_tags

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
MODEL_CARD = "model_card.html"
RECOMPARED = "gate_record_recompared.json"
"""The gate record re-compared against a champion that moved since evaluation (logged to the promote run)."""
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
    """Log the candidate as a data-only pyfunc, seal it (manifest of every stored file) and register it with the
    manifest's sha256, lineage and gate-record tags."""
    dataset = ctx.dataset
    model_dir = ctx.path(record["candidate"]["model_dir"])
    example = pd.read_parquet(ctx.path(SPLITS["valid"]), columns=dataset.features).head(5)
    info = log_pyfunc(ctx.root, model_dir, example)
    sealed = model_store.seal(client, ctx.tracking.tracking_uri, info.model_id, artifact_model_dir(model_dir))
    tags = {
        model_store.MANIFEST_TAG: sealed,
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
    sha = model_store.log_json(record, "gate_record.json")
    uris = {"retrain.gate_record": f"runs:/{run_id}/gate_record.json", model_store.RECORD_SHA_TAG: sha}
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
        elif now != seen:  # read-only: the same re-comparison promote would run against the new champion
            updated, problem = recompare_with(ctx, record, registry.champion(ctx.tracking.tracking_uri, name, alias))
            if updated is None:
                action, message = "would_refuse", f"would refuse: {alias} moved from {seen} to {now}; {problem}"
            elif updated["decision"] != "promote":
                action = "would_reject_on_recompare"
                message = f"would not promote: {lost_line(updated, ctx.params.evaluate.metric)}"
            else:
                action = "would_promote"
                message = (
                    f"would promote {target} of {family} to {CHALLENGER} and {alias}: it still passes every gate "
                    f"against version {now} ({alias} moved from {seen} since evaluation)"
                )
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


def recompare_with(
    ctx: StageContext, record: dict[str, Any], champ: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The gate record re-compared against the champion now in the registry, on this workspace's test rows.

    Returns (re-compared record, None), or (None, why) when the candidate on disk or the test split is not
    the one evaluated (then nothing can be re-compared honestly).
    """
    from engine.context import tree_md5
    from retrain.evaluation.recompare import candidate_matches, recompare, recompared_record
    from retrain.metrics import class_labels, encode_target, score
    from retrain.models.estimators import load_predictor
    from tasks.evaluate import champion_record

    dataset, metric = ctx.dataset, ctx.params.evaluate.metric
    model_dir = ctx.path(record["candidate"]["model_dir"])
    if tree_md5(model_dir) != record["candidate"]["model_hash"]:
        return None, f"{model_dir} is not the evaluated model (its hash is not {record['candidate']['model_hash']})"
    test = pd.read_parquet(ctx.path(SPLITS["test"]))
    y_test, X_test = encode_target(test[dataset.target], dataset), test[dataset.features]
    scores = load_predictor(model_dir).predict_scores(X_test)
    problem = candidate_matches(record, metric, y_test, scores)
    if problem is not None:
        return None, f"{problem} ({SPLITS['test']} or the model changed since evaluate)"
    champion_raw = None
    if champ is not None:
        champion_raw = registry.load_champion_scores(champ, X_test, dataset.task, class_labels(dataset))
    champion_score = score(metric, y_test, champion_raw) if champion_raw is not None else None
    latency = (champion_record(ctx.tracking.tracking_uri, champ) or {}).get("latency") or None
    gates, extra = recompare(ctx.params, dataset, record, X_test, y_test, scores, champion_raw, latency)
    return recompared_record(record, gates, extra, champ, champion_score), None


def promote(ctx: StageContext, record: dict[str, Any], client: MlflowClient, uris: dict[str, str]) -> dict[str, Any]:
    """Under the registry lock: re-compare if champion moved, register, set challenger, move champion; audit each.

    The lock (`promote.lock`) is keyed on the store, so workspaces sharing one registry exclude each other.
    When champion is not the version evaluate compared with, the champion-dependent gates run again against
    the champion now in place (retrain/evaluation/recompare.py): the candidate is promoted only if it still
    passes (the better model wins whichever promotes first); otherwise nothing is registered and no alias
    moves (`rejected_on_recompare`, exit 3). The re-compared record is logged to this run
    (`gate_record_recompared.json`) and is what the version's tag and the audit entries point at.
    """
    cfg = ctx.params.promote
    name, alias, uri = cfg.model_name, cfg.alias, ctx.tracking.tracking_uri
    trigger = ctx.tracking.tags.get("retrain.trigger", "cli")
    run_id = mlflow.active_run().info.run_id
    written: list[dict[str, Any]] = []

    def move(which: str, before: str | None, to: str, gate_record: str | None) -> None:
        """Point an alias and append its audit entry (still under the lock)."""
        client.set_registered_model_alias(name, which, to)
        logger.info("promote: %s@%s %s -> %s", name, which, before, to)
        written.append(
            audit.append(
                uri,
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

    with registry.registry_lock(uri, name, cfg.lock, cfg.lock_timeout, what=f"promote of {name} (run {run_id})"):
        version = registry.find_version(client, name, record["candidate"]["model_hash"])
        current = registry.champion(uri, name, alias)  # compare-and-set: read under the lock
        now = current["version"] if current else None
        seen = (record.get("champion") or {}).get("version")
        recompared: dict[str, Any] | None = None
        if now != seen and (version is None or now != version):
            logger.warning("promote: %s moved from version %s (seen by evaluate) to %s: re-comparing", alias, seen, now)
            updated, problem = recompare_with(ctx, record, current)
            if updated is None:
                message = (
                    f"promote: REFUSED: {alias} moved from version {seen} (seen by evaluate) to {now} and the "
                    f"candidate cannot be re-compared: {problem}; nothing registered, {alias} left at {now}; "
                    "re-run evaluate"
                )
                logger.error("%s", message)
                challenger = registry.alias_version(client, name, CHALLENGER)
                return _outcome("refused", message, version, challenger, now, written, None)
            record = updated
            sha = model_store.log_json(record, RECOMPARED)
            uris = uris | {"retrain.gate_record": f"runs:/{run_id}/{RECOMPARED}", model_store.RECORD_SHA_TAG: sha}
            mlflow.set_tag("retrain.gate_record_recompared", uris["retrain.gate_record"])
            recompared = record["recompared"] | {"gate_record": uris["retrain.gate_record"]}
            if record["decision"] != "promote":
                message = f"promote: not promoted: {lost_line(record, ctx.params.evaluate.metric)}"
                message += f"; nothing registered, {alias} left at version {now}, {CHALLENGER} unchanged"
                logger.error("%s", message)
                challenger = registry.alias_version(client, name, CHALLENGER)
                return _outcome("rejected_on_recompare", message, version, challenger, now, written, recompared)
            logger.info("promote: still passes every gate against version %s: promoting", now)
        if version is None:
            version = log_and_register(ctx, record, client, uris)
            logger.info("promote: registered %s version %s", name, version)
        gate_uri = uris["retrain.gate_record"]  # the record that justified this move (this run's, re-compared if so)
        challenger = registry.alias_version(client, name, CHALLENGER)
        if challenger != version:
            move(CHALLENGER, challenger, version, gate_uri)
        message = ""
        if now == version:
            action = "already_champion"
        else:
            move(alias, now, version, gate_uri)
            action = "promoted"
            if recompared is not None:
                message = f"promote: promoted after re-comparison: {lost_line(record, ctx.params.evaluate.metric)}"
        champion = registry.alias_version(client, name, alias)
    return _outcome(action, message, version, version, champion, written, recompared)


def _outcome(
    action: str,
    message: str,
    version: str | None,
    challenger: str | None,
    champion: str | None,
    audit_entries: list[dict[str, Any]],
    recompared: dict[str, Any] | None,
) -> dict[str, Any]:
    """promote's result: what it did, the versions, the audit entries written, the re-comparison (None if none)."""
    return {
        "action": action,
        "message": message,
        "version": version,
        "challenger_version": challenger,
        "champion_version": champion,
        "audit": audit_entries,
        "recompared": recompared,
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
