"""The machine-readable summary of one pipeline run (what `retrain run --json` prints): wiring that knows the stages."""

from __future__ import annotations

import time
from typing import Any

from adapters.jsonfile import read_json
from adapters.mlflow_links import ui_base
from engine.pipeline import PipelineRun
from retrain.catalog import BASELINES, CANDIDATES, GATE_RECORD


def run_summary(run: PipelineRun) -> dict[str, Any]:
    """Stages (cached or ran, seconds), metrics, gates, how the candidate was selected, decision and model version.

    `selection` is the gate record's section (ranking, chosen family, why each candidate was passed over);
    `mlflow_ui_url` the MLflow UI links point at (adapters/mlflow_links.py), `mlflow_ui_known` whether it is
    known to serve this store (configured, the tracking server, or the UI `make servers` started).
    """
    by_name = {s.name: s.result for s in run.stages}
    evaluate = by_name.get("evaluate", {}).get("info", {})
    promote = by_name.get("promote", {}).get("info", {})
    record_path = run.root / GATE_RECORD
    record = read_json(record_path) if "evaluate" in by_name and record_path.exists() else {}
    gates = record.get("gates", [])
    ran = {"baselines", "candidates"} <= set(by_name)
    families: dict[str, Any] = {}
    if ran and (run.root / CANDIDATES / "summary.json").exists() and (run.root / BASELINES).exists():
        from retrain.models.baselines import families_vs_baselines  # numpy/pandas: not for a cached start

        tuned = read_json(run.root / CANDIDATES / "summary.json")
        families = families_vs_baselines(tuned, read_json(run.root / BASELINES))
        for family, entry in tuned["families"].items():
            families[family] |= {k: entry.get(k) for k in ("cv_score", "n_trials", "n_pruned")}
    ui, ui_known = ui_base(run.tracking.tracking_uri, run.params.tracking.ui_url, run.root)
    return {
        "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3)} for s in run.stages],
        "metrics": {s.name: s.result.get("metrics", {}) for s in run.stages},
        "gates": gates,
        "families": families,
        "family": evaluate.get("family"),
        "selection": record.get("selection"),
        "decision": evaluate.get("decision"),
        "failed_gates": evaluate.get("failed_gates", []),
        "promotion": promote.get("action"),
        "promotion_message": promote.get("message", ""),
        "dry_run": run.dry_run,
        "model_name": run.params.promote.model_name,
        "model_version": promote.get("version"),
        "challenger_version": promote.get("challenger_version"),
        "champion_version": promote.get("champion_version"),
        "audit": promote.get("audit", []),
        "recompared": promote.get("recompared"),  # champion moved since evaluate: the gates re-run against it
        "data_hash": run.tracking.tags.get("retrain.data_hash"),
        "metric": run.params.evaluate.metric,
        "mlflow_run_id": run.tracking.parent_run_id,
        "mlflow_experiment_id": run.tracking.experiment_id,
        "tracking_uri": run.tracking.tracking_uri,
        "mlflow_ui_url": ui,
        "mlflow_ui_known": ui_known,
        "prefect_flow_run_id": run.tracking.tags.get("retrain.prefect_flow_run_id"),
        "recovered": run.recovered,
        "seconds": round(time.perf_counter() - run.started, 3),
    }


def summary_tags(summary: dict[str, Any]) -> dict[str, str]:
    """Tags the parent MLflow run closes with."""
    return {"retrain.decision": str(summary.get("decision")), "retrain.promotion": str(summary.get("promotion"))}
