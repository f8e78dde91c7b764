"""Crash recovery: a `retrain run` killed with SIGKILL mid-training is cleaned up by the next run, which completes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from engine.recovery import RECOVERED_TAG
from tests.conftest import small_params
from tests.flows.ops_project import kill_group, output, shared_project, start

pytestmark = pytest.mark.e2e

EXPERIMENT = small_params()["tracking"]["experiment"]
OVERRIDE = ("--set", "candidates.n_trials=3")


def wait_for_running_stage(uri: str, stage: str, proc, timeout: float = 240) -> str:
    """Poll the MLflow store until a RUNNING run named `stage` appears; its run id."""
    client = MlflowClient(uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"retrain run ended (exit {proc.returncode}) before {stage} started"
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            runs = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"attributes.status = 'RUNNING' and attributes.run_name = '{stage}'",
            )
            if runs:
                return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING {stage} run within {timeout}s")


def test_a_run_killed_mid_training_is_recovered_by_the_next_run(
    tmp_path_factory: pytest.TempPathFactory, prefect_backend: None
) -> None:
    root = shared_project(tmp_path_factory)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # the store's schema first: the poller below must not run MLflow's migrations while the run does
    MlflowClient(uri).search_experiments()
    killed = start(root, *OVERRIDE, log="killed")
    try:
        stage_run_id = wait_for_running_stage(uri, "candidates", killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        kill_group(killed)
    assert killed.returncode == -signal.SIGKILL, "the first run was killed, not finished"
    client = MlflowClient(uri)
    stage = client.get_run(stage_run_id)
    parent_id = stage.data.tags["mlflow.parentRunId"]
    flow_run_id = stage.data.tags["retrain.prefect_flow_run_id"]
    assert client.get_run(parent_id).info.status == "RUNNING", "the killed run's parent is left RUNNING"

    rerun = start(root, *OVERRIDE, log="rerun")
    try:
        code = rerun.wait(timeout=600)
    finally:
        kill_group(rerun)
    out, err = output(root, "rerun")
    assert code in (0, 3), err[-3000:]  # 3: the gates rejected the candidate (e.g. a better champion already exists)
    summary = json.loads(out)
    assert summary["status"] == "completed", "the rerun completes"
    status = {s["name"]: s["status"] for s in summary["stages"]}
    for name in ("ingest", "version", "validate", "split", "baselines"):
        assert status[name] == "cached", f"{name} finished before the kill and must come from the cache: {status}"
    assert status["candidates"] == "ran", "the killed stage runs again"
    assert set(summary["recovered"]["mlflow_runs"]) >= {parent_id, stage_run_id}, summary["recovered"]
    for run_id in (parent_id, stage_run_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED", f"run {run.data.tags.get('mlflow.runName')} of the killed process"
        assert RECOVERED_TAG in run.data.tags, "recovered runs say who closed them"
    assert summary["recovered"]["prefect_flow_runs"] == [flow_run_id]
    with get_client(sync_client=True) as prefect:
        state = prefect.read_flow_run(flow_run_id).state_type.value
    assert state == "CRASHED", f"the killed flow run is {state} in Prefect"


def test_recover_closes_runs_of_dead_processes_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    from engine.recovery import process_tags, recover

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("ops", artifact_location=(tmp_path / "art").as_uri())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = process_tags()
    gone = {**mine, "retrain.pid": str(dead.pid)}
    elsewhere = {**gone, "retrain.host": "another-host"}
    runs = {
        name: client.create_run(experiment, run_name=name, tags=tags).info.run_id
        for name, tags in (("alive", mine), ("dead", gone), ("other-host", elsewhere), ("untagged", {}))
    }
    result = recover(uri, experiment, prefect=False)
    assert result["mlflow_runs"] == [runs["dead"]], f"only the dead process's run is closed: {result}"
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"alive": "RUNNING", "dead": "FAILED", "other-host": "RUNNING", "untagged": "RUNNING"}, status
    assert RECOVERED_TAG in client.get_run(runs["dead"]).data.tags
