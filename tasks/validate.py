"""validate: the data gate (GX suite + champion domains, label balance, CV feasibility, leakage, drift).

A failure stops the run. GX Data Docs (HTML) and the JSON report are logged to MLflow under `validation/`
whatever the verdict, so a failed gate can be inspected; only a passing gate writes
models/validate/report.json and pushes the snapshot to the DVC remote (`version` only put it in the local
cache), so a rejected snapshot never reaches the remote. The champion's training snapshot (fetched once from
DVC by the md5 the champion is tagged with) is the reference of both drift and the champion domains.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from adapters import dvc_store as dvcstore
from adapters.jsonfile import write_json
from adapters.mlflow_registry import champion
from engine.context import StageContext, clear_outputs, finish, stage_run
from engine.stage import Stage
from retrain.catalog import DATASET_KEYS, SCHEMA, SNAPSHOT, VALIDATION
from retrain.data.domains import ChampionDomains, derive, without_reference
from retrain.data.drift import drift_without_reference, feature_drift
from retrain.data.ingest import SOURCE_COLUMN, main_rows
from retrain.data.validate import (
    check_snapshot,
    describe_failure,
    failures,
    warnings,
)
from retrain.errors import DataError, DataValidationError

logger = logging.getLogger(__name__)


def fetch_reference(ctx: StageContext, reference: str, tmp: Path) -> tuple[pd.DataFrame | None, str | None]:
    """The main-source rows of the champion's training snapshot, fetched from DVC by md5: (rows, None).

    (None, None) when nothing needs it (reference `none`/`off`, or drift and champion domains both off);
    (None, why) when it cannot be fetched and neither setting is `block` (logged as a warning). With
    `validate.drift.action` or `validate.domains.action` block, an unavailable reference is a DataError.
    """
    cfg = ctx.params.validate_
    actions = {"validate.drift.action": cfg.drift.action, "validate.domains.action": cfg.domains.action}
    if reference in ("none", "off") or all(a == "off" for a in actions.values()):
        return None, None
    dest = tmp / "reference.parquet"
    try:
        dvcstore.fetch(ctx.root, reference, dest, ctx.params.version.remote)
    except DataError as exc:
        blocking = [key for key, action in actions.items() if action == "block"]
        if blocking:
            raise DataError(
                f"validate: reference (the champion's training snapshot, DVC md5 {reference}) unavailable, and "
                f"{' and '.join(f'{k}=block' for k in blocking)} needs it: {exc}"
            ) from exc
        logger.warning(
            "validate: drift and champion domains not checked, the champion's training snapshot is unavailable: %s",
            exc,
        )
        return None, str(exc)
    snapshot = pd.read_parquet(dest)
    if SOURCE_COLUMN in snapshot.columns:
        snapshot = main_rows(snapshot)
    return snapshot, None


def drift_section(
    ctx: StageContext, main: pd.DataFrame, reference: str, rows: pd.DataFrame | None, unavailable: str | None
) -> dict[str, Any]:
    """PSI of the main rows against the champion's training snapshot's main rows (`rows`, see fetch_reference)."""
    cfg = ctx.params.validate_.drift
    unmeasured = drift_without_reference(cfg.action, reference)
    if unmeasured is not None:
        return unmeasured
    if rows is None:
        return {"status": "unavailable", "action": cfg.action, "reference_data_hash": reference, "reason": unavailable}
    table = feature_drift(rows, main, ctx.dataset, cfg)
    return {"status": "computed", "action": cfg.action, "reference_data_hash": reference, **table}


def champion_domains(
    ctx: StageContext, reference: str, rows: pd.DataFrame | None, unavailable: str | None
) -> ChampionDomains:
    """Domains and ranges for the columns the schema leaves open, from the champion's snapshot's main rows."""
    action = ctx.params.validate_.domains.action
    if rows is None or action == "off":
        return without_reference(action, reference, unavailable)
    return derive(rows, ctx.dataset, action, reference)


REFERENCE_KEY = "reference"
"""validate's external cache input: the champion's snapshot md5, `none` or `off` (for drift and champion domains)."""


def reference_input(ctx: StageContext) -> dict[str, str]:
    """The reference of drift and champion domains as a cache-key input: the champion's training-snapshot md5.

    `none` when there is no champion (or it carries no data hash), and also when the champion was trained on
    this very snapshot (drift against itself is zero, nothing in it is unseen), so an unchanged rerun after
    promotion stays a cache hit; `off` when drift and champion domains are both off, so the registry never
    matters then.
    """
    params = ctx.params
    if params.validate_.drift.action == "off" and params.validate_.domains.action == "off":
        return {REFERENCE_KEY: "off"}
    current = champion(ctx.tracking.tracking_uri, params.promote.model_name, params.promote.alias)
    data_hash = (current or {}).get("data_hash")
    snapshot = ctx.path(SNAPSHOT)
    if not data_hash or (snapshot.exists() and dvcstore.file_md5(snapshot) == data_hash):
        return {REFERENCE_KEY: "none"}
    return {REFERENCE_KEY: str(data_hash)}


def run(ctx: StageContext) -> dict[str, Any]:
    """Run every check of the gate, log Data Docs and the report, and raise naming every failed check."""
    clear_outputs(ctx)
    params = ctx.params
    files = {"main": params.ingest.source, "test": params.ingest.test_source}
    with stage_run(ctx) as active:
        started = time.perf_counter()
        snapshot = pd.read_parquet(ctx.path(SNAPSHOT))
        dataset = ctx.dataset
        reference = ctx.external.get(REFERENCE_KEY) or reference_input(ctx)[REFERENCE_KEY]
        with tempfile.TemporaryDirectory(prefix="retrain-validate-") as tmp_name:
            tmp = Path(tmp_name)
            docs = tmp / "data_docs"
            rows, unavailable = fetch_reference(ctx, reference, tmp)
            report, gx_seconds = check_snapshot(
                snapshot,
                dataset,
                params,
                docs,
                lambda main: drift_section(ctx, main, reference, rows, unavailable),
                reference,
                champion_domains(ctx, reference, rows, unavailable),
            )
            mlflow.log_artifacts(str(docs), "validation/data_docs")
        mlflow.log_dict(report, "validation/report.json")
        mlflow.set_tags({"retrain.reference": reference, "retrain.validation_success": str(report["success"])})
        metrics = _metrics(report, gx_seconds, time.perf_counter() - started)
        mlflow.log_metrics(metrics)
        for check in warnings(report):
            logger.warning("validate: warning (not blocking): %s", describe_failure(check, files))
        if not report["success"]:
            failed = failures(report)
            lines = "\n  ".join(describe_failure(c, files) for c in failed)
            sources = " + ".join(str(f) for f in files.values() if f)
            raise DataValidationError(
                f"validate: {sources} (snapshot {SNAPSHOT}) failed {len(failed)} of {report['evaluated']} checks "
                f"(MLflow run artifacts: validation/data_docs/validation_result.html, validation/report.json):"
                f"\n  {lines}",
                failed,
            )
        pushed = publish(ctx)
        write_json(ctx.path(VALIDATION), report)
        logger.info(
            "validate: %d checks passed (%d warnings) in %.1fs; snapshot %s pushed to DVC remote %s",
            report["evaluated"],
            report["warned"],
            metrics["validate_seconds"],
            pushed["md5"],
            pushed["remote"],
        )
        return finish(ctx, active, {k: v for k, v in metrics.items() if not k.endswith("_seconds")}, pushed=pushed)


def publish(ctx: StageContext) -> dict[str, str]:
    """Push the snapshot that passed the gate to the DVC remote (`version.remote`, else the default).

    It is added to the local cache first (a no-op after `version`, which `dvc repro` may run after this stage).
    """
    snapshot = ctx.path(SNAPSHOT)
    remote = dvcstore.remote_info(ctx.root, ctx.params.version.remote)
    md5 = dvcstore.add_to_cache(ctx.root, snapshot)
    url = dvcstore.push(ctx.root, md5, remote.name)
    return {"md5": md5, "remote": remote.name, "url": url}


def _metrics(report: dict[str, Any], gx_seconds: float, seconds: float) -> dict[str, float]:
    """Numbers worth a chart across runs: counts, duplicate rate, worst leakage score, worst PSI, worst share
    outside a champion domain, time."""
    metrics = {
        "expectations_evaluated": float(report["evaluated"]),
        "checks_failed": float(report["failed"]),
        "checks_warned": float(report["warned"]),
        "gx_seconds": round(gx_seconds, 3),
        "validate_seconds": round(seconds, 3),
    }
    for check in report["checks"]:
        if check["rule"] == "ExpectCompoundColumnsToBeUnique" and check.get("unexpected_percent") is not None:
            metrics["duplicate_percent"] = float(check["unexpected_percent"])
    if report["leakage"]["max"] is not None:
        metrics["leakage_max_score"] = float(report["leakage"]["max"])
    if report["drift"].get("max_psi") is not None:
        metrics["drift_max_psi"] = float(report["drift"]["max_psi"])
    shares = [c.get("unexpected_percent") or 0.0 for c in report["checks"] if c.get("reference")]
    if shares:
        metrics["champion_domain_max_percent"] = float(max(shares))
    return metrics


STAGE = Stage(
    "validate",
    run,
    deps=(SNAPSHOT, SCHEMA),
    outs=(VALIDATION,),
    params=(
        "validate",
        *DATASET_KEYS,
        "split.group_column",
        "split.time_column",
        "split.valid_size",
        "split.test_size",
        "candidates.cv_folds",
        "seed",
        "version.remote",
    ),
    key_inputs=reference_input,
)
