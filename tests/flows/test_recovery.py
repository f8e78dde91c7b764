"""Crash recovery: runs left RUNNING by a dead process are closed KILLED, in every experiment of the store.

The end-to-end cases (a real `retrain run` killed with SIGKILL, SIGTERM, SIGINT inside candidates) are in
tests/faults/test_signals.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow_runs import create_run
from engine.recovery import RECOVERED_TAG, process_tags, recover


def test_recover_closes_runs_of_dead_processes_only(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("ops", artifact_location=(tmp_path / "art").as_uri())
    audit = client.create_experiment("retrain-audit", artifact_location=(tmp_path / "audit").as_uri())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = process_tags()
    gone = {**mine, "retrain.pid": str(dead.pid)}
    elsewhere = {**gone, "retrain.host": "another-host"}
    runs = {
        name: client.create_run(experiment, run_name=name, tags=tags).info.run_id
        for name, tags in (("alive", mine), ("dead", gone), ("other-host", elsewhere), ("untagged", {}))
    }
    # a nested run opened without owner tags belongs to its parent's process; another experiment is searched too
    runs["dead-child"] = client.create_run(
        experiment, run_name="dead-child", tags={"mlflow.parentRunId": runs["dead"]}
    ).info.run_id
    runs["alive-child"] = client.create_run(
        experiment, run_name="alive-child", tags={"mlflow.parentRunId": runs["alive"]}
    ).info.run_id
    runs["dead-audit"] = client.create_run(audit, run_name="dead-audit", tags=gone).info.run_id
    result = recover(uri, experiment, prefect=False)
    closed = {runs["dead"], runs["dead-child"], runs["dead-audit"]}
    assert set(result["mlflow_runs"]) == closed, f"only the dead process's runs are closed: {result}"
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {
        "alive": "RUNNING",
        "dead": "KILLED",
        "other-host": "RUNNING",
        "untagged": "RUNNING",
        "dead-child": "KILLED",
        "alive-child": "RUNNING",
        "dead-audit": "KILLED",
    }, status
    for run_id in closed:
        note = client.get_run(run_id).data.tags[RECOVERED_TAG]
        assert f"owner pid {dead.pid}" in note, f"the recovered tag names the dead owner: {note}"

    # the helper every client-made run goes through (parent, cached stage, audit) tags the owner; an explicit
    # owner (the dvc parent's: the dvc process) is kept
    run = create_run(client, experiment, "pipeline-cli", {"retrain.trigger": "cli"})
    assert {k: run.data.tags[k] for k in mine} == mine, run.data.tags
    dvc = create_run(client, experiment, "pipeline-dvc", {"retrain.pid": "1", "retrain.process_started": "0.00"})
    assert dvc.data.tags["retrain.pid"] == "1", "an explicit owner (the dvc process) is kept"


def test_sigterm_in_a_run_block_ends_it_killed_and_a_second_signal_does_not_cut_the_cleanup(tmp_path: Path) -> None:
    """flows/signals.py in this process: SIGTERM raises `Terminated` where the code is; the block's run ends KILLED;
    a second SIGTERM while closing is ignored; the previous handlers are back afterwards."""
    import os
    import signal

    import mlflow

    from adapters.mlflow_runs import open_run
    from flows.signals import Terminated, signal_of, stop_on_signals

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = MlflowClient(uri).create_experiment("sig", artifact_location=(tmp_path / "art").as_uri())
    before = signal.getsignal(signal.SIGTERM)
    closing: list[str] = []
    with pytest.raises(Terminated) as stopped, stop_on_signals(), open_run(experiment, "stage", {}) as run:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, long before this ends
            closing.append("not interrupted")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # while unwinding: logged, not raised again
            closing.append("cleanup finished")
    assert closing == ["cleanup finished"], closing
    assert signal_of(stopped.value) == signal.SIGTERM
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) == before, "the previous SIGTERM handler is restored"
    mlflow.set_tracking_uri(None)


def test_a_stop_while_mlflow_starts_the_run_still_ends_it_killed(tmp_path: Path, monkeypatch) -> None:
    """A SIGTERM landing inside `mlflow.start_run` (after the run exists, while the system-metrics sampler starts:
    the slow part on a busy machine) must not leave a RUNNING run: the block that asked for it ends it KILLED."""
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from adapters.mlflow_runs import open_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("stop-while-starting")

    def stopped(self: SystemMetricsMonitor) -> None:  # where the signal lands, as Prefect or flows.signals raise it
        raise KeyboardInterrupt

    monkeypatch.setattr(SystemMetricsMonitor, "start", stopped)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.raises(KeyboardInterrupt), open_run(experiment, "candidates/lightgbm", {}, log_system_metrics=True):
            pytest.fail("the block must not be entered")
    finally:
        mlflow.set_tracking_uri(None)
    (run,) = client.search_runs([experiment])
    assert run.info.status == "KILLED", f"a stop inside start_run left the run {run.info.status}"
    assert run.data.tags["retrain.pid"] and run.data.tags["mlflow.runName"] == "candidates/lightgbm", run.data.tags
    assert "mlflow.user" in run.data.tags, "the run keeps MLflow's context tags (user, source)"
