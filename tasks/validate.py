"""validate: the data gate (GX suite + label balance, CV feasibility, leakage, drift); a failure stops the run.

GX Data Docs (HTML) and the JSON report are logged to MLflow under `validation/` whatever the verdict, so a
failed gate can be inspected; only a passing gate writes models/validate/report.json.
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
from retrain.data.drift import drift_without_reference, feature_drift
from retrain.data.ingest import SOURCE_COLUMN
from retrain.data.validate import (
    check_snapshot,
    describe_failure,
    failures,
    warnings,
)
from retrain.errors import DataError, DataValidationError

logger = logging.getLogger(__name__)


def drift_section(ctx: StageContext, main: pd.DataFrame, reference: str, tmp: Path) -> dict[str, Any]:
    """PSI of the main rows against the champion's training snapshot, fetched from DVC by md5."""
    cfg = ctx.params.validate_.drift
    unmeasured = drift_without_reference(cfg.action, reference)
    if unmeasured is not None:
        return unmeasured
    dest = tmp / "reference.parquet"
    try:
        dvcstore.fetch(ctx.root, reference, dest, ctx.params.version.remote)
    except DataError as exc:
        if cfg.action == "block":
            raise DataError(f"validate: drift reference (the champion's training snapshot) unavailable: {exc}") from exc
        logger.warning("validate: drift not measured, the champion's training snapshot is unavailable: %s", exc)
        return {"status": "unavailable", "action": cfg.action, "reference_data_hash": reference, "reason": str(exc)}
    snapshot = pd.read_parquet(dest)
    if SOURCE_COLUMN in snapshot.columns:
        snapshot = snapshot[snapshot[SOURCE_COLUMN] == "main"]
    table = feature_drift(snapshot, main, ctx.dataset, cfg)
    return {"status": "computed", "action": cfg.action, "reference_data_hash": reference, **table}


REFERENCE_KEY = "drift_reference"
"""validate's external cache input: the champion's snapshot md5, `none` or `off`."""


def drift_reference_input(ctx: StageContext) -> dict[str, str]:
    """The drift reference as a cache-key input: the champion's training-snapshot md5.

    `none` when there is no champion (or it carries no data hash), and also when the champion was trained on
    this very snapshot (drift against itself is zero), so an unchanged rerun after promotion stays a cache hit;
    `off` when drift is switched off, so the registry never matters then.
    """
    params = ctx.params
    if params.validate_.drift.action == "off":
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
        reference = ctx.external.get(REFERENCE_KEY) or drift_reference_input(ctx)[REFERENCE_KEY]
        with tempfile.TemporaryDirectory(prefix="retrain-validate-") as tmp_name:
            tmp = Path(tmp_name)
            docs = tmp / "data_docs"
            report, gx_seconds = check_snapshot(
                snapshot, dataset, params, docs, lambda main: drift_section(ctx, main, reference, tmp), reference
            )
            mlflow.log_artifacts(str(docs), "validation/data_docs")
        mlflow.log_dict(report, "validation/report.json")
        mlflow.set_tags({"retrain.drift_reference": reference, "retrain.validation_success": str(report["success"])})
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
                f"(Data Docs and report.json under the MLflow run's validation/ artifacts):\n  {lines}",
                failed,
            )
        write_json(ctx.path(VALIDATION), report)
        logger.info(
            "validate: %d checks passed (%d warnings) in %.1fs",
            report["evaluated"],
            report["warned"],
            metrics["validate_seconds"],
        )
        return finish(ctx, active, {k: v for k, v in metrics.items() if not k.endswith("_seconds")})


def _metrics(report: dict[str, Any], gx_seconds: float, seconds: float) -> dict[str, float]:
    """Numbers worth a chart across runs: counts, duplicate rate, worst leakage score, worst PSI, time."""
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
    ),
    key_inputs=drift_reference_input,
)
