"""The end-of-run summary `retrain run` prints (rich tables on stderr) shows every stage, candidate and gate."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from flows.cli import main, print_summary

RETRAIN = str(Path(sys.executable).parent / "retrain")

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


def test_version_names_retrain_and_its_components() -> None:
    done = subprocess.run([RETRAIN, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, components = done.stdout.splitlines()[:2]
    assert first.startswith("retrain 0.") and "(Python 3.11" in first, first
    for dist in ("prefect 3.", "mlflow 3.", "dvc 3.", "great-expectations 1.", "lightgbm ", "scikit-learn 1."):
        assert dist in components, f"{dist!r} missing from --version: {components}"
    assert done.stderr == "", f"--version prints nothing else: {done.stderr!r}"


def test_stages_prints_a_table_of_the_records(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.dag import DAG

    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    names = [stage.name for stage in DAG]
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip() and line.split()[0] in names}
    assert list(rows) == names, f"one row per stage, in DAG order:\n{out}"
    assert " never " in rows["promote"] and " yes " in rows["ingest"], f"the cached column:\n{out}"
    assert "data/processed/train.parquet" in out and "models/evaluate " in out, "deps and outs, paths whole in a pipe"
    assert "files" in rows["evaluate"] and "key_inputs" in rows["evaluate"], rows["evaluate"]
