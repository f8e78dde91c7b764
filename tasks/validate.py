"""validate: the Great Expectations data gate; a failed expectation stops the run."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import pandas as pd
from prefect import task

from retrain.errors import DataValidationError
from retrain.ingest import SOURCE_COLUMN
from retrain.stages import SNAPSHOT, VALIDATION
from retrain.validate import describe_failure, summarise, validate_frame
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json

logger = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    """Validate the snapshot against the declared schema; raise naming every failed check."""
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        snapshot = pd.read_parquet(ctx.path(SNAPSHOT))
        frame = snapshot.drop(columns=[SOURCE_COLUMN])
        report = summarise(validate_frame(frame, ctx.dataset, ctx.params.validate_))
        mlflow.log_dict(report, "validation/report.json")
        mlflow.log_metrics({"expectations_evaluated": report["evaluated"], "expectations_failed": report["failed"]})
        if not report["success"]:
            failures = [c for c in report["checks"] if not c["success"]]
            lines = "\n  ".join(describe_failure(c) for c in failures)
            raise DataValidationError(
                f"validate: {ctx.params.ingest.source} (snapshot {SNAPSHOT}) failed {len(failures)} of "
                f"{report['evaluated']} expectations:\n  {lines}",
                failures,
            )
        write_json(ctx.path(VALIDATION), report)
        logger.info("validate: all %d expectations passed", report["evaluated"])
        return finish(ctx, active, {"expectations_evaluated": float(report["evaluated"])})


validate_task = task(run, name="validate")
