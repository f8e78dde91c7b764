"""The training flow: the DAG of DESIGN.md, top to bottom."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from retrain.config import load_params
from retrain.paths import project_root, resolve
from tasks.pipeline import PipelineRun, preflight

logger = logging.getLogger(__name__)

DEFAULT_PARAMS = "params.yaml"


@flow(name="retrain", log_prints=False, validate_parameters=True)
def retrain_flow(
    params_file: str = DEFAULT_PARAMS,
    overrides: list[str] | None = None,
    trigger: str = "cli",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Version, validate, split, train, gate and promote (or, with dry_run, report what promote would do)."""
    root = project_root()
    params = load_params(resolve(root, params_file), overrides)
    preflight(params)
    is_default = not overrides and resolve(root, params_file) == root / DEFAULT_PARAMS
    run = PipelineRun.start(
        root, params, trigger, commit_lineage=is_default and not dry_run, flow_run_id=flow_run.get_id(), dry_run=dry_run
    )
    try:
        # --- data: snapshot, version, gate, split ---
        run.stage("ingest")
        run.stage("version")
        run.stage("validate", external=run.reference_input())
        run.stage("split")
        # --- models: reference points and tuned candidates ---
        run.stage("baselines")
        candidates = run.stage("candidates")
        # --- offline gates and promotion ---
        run.stage("evaluate", external=run.champion_input(candidates))
        run.stage("promote", external={"dry_run": "true"} if dry_run else None)
        run.record_lineage()
    except BaseException:
        run.finish("FAILED")
        raise
    return run.finish("FINISHED")
