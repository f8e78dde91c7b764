"""The end-of-run summary `retrain run` prints (rich tables on stderr) shows every stage, candidate and gate."""

from __future__ import annotations

import io

from rich.console import Console

from flows.cli import print_summary

SUMMARY = {
    "stages": [
        {"name": "ingest", "status": "cached", "seconds": 0.1},
        {"name": "evaluate", "status": "ran", "seconds": 2},
    ],
    "families": {
        "lightgbm": {
            "cv_score": 0.93,
            "valid_score": 0.931,
            "n_trials": 20,
            "beats_baselines": True,
            "best_baseline": "heuristic",
        }
    },
    "metrics": {"evaluate": {"test_roc_auc": 0.9299}},
    "family": "lightgbm",
    "metric": "roc_auc",
    "gates": [
        {"name": "beats_baselines", "status": "pass", "reason": "0.93 > best baseline 0.78 + 0.05"},
        {"name": "latency", "status": "fail", "reason": "p95 [31 ms] > 20 ms"},
    ],
    "decision": "reject",
    "promotion": "rejected",
    "model_name": "adult-income",
    "challenger_version": "2",
    "champion_version": "1",
    "data_hash": "abc123",
    "promotion_message": "candidate rejected by gates latency; champion left at 1",
    "audit": [],
    "tracking_uri": "sqlite:///x/mlflow.db",
    "mlflow_run_id": "r1",
    "mlflow_experiment_id": "1",
}


def test_summary_lists_stages_candidates_gates_and_the_decision() -> None:
    out = io.StringIO()
    print_summary(SUMMARY, Console(file=out, width=100, color_system=None))
    text = out.getvalue()
    for needle in ("ingest", "cached", "evaluate", "lightgbm", "0.9300", "beats_baselines", "latency"):
        assert needle in text, f"{needle!r} missing from the summary:\n{text}"
    assert "p95 [31 ms] > 20 ms" in text, "a reason with brackets is printed as-is, not read as rich markup"
    assert "decision: reject (rejected); adult-income challenger = version 2, champion = version 1" in text, text
    assert "champion left at 1" in text
