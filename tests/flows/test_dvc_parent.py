"""The shared parent run of a `dvc repro`: which process it belongs to, and its recovery once dvc is gone.

The full path (8 stages under one parent) is checked on the real `dvc repro` of test_dvc_repro.py; these are the
cheap edges around it, on a real SQLite MLflow store and real processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from engine.context import ensure_experiment
from engine.recovery import recover
from engine.runner import INVOCATION_TAG, dvc_invocation, dvc_process, start_parent_run

FAKE_DVC = "#!{python}\nimport subprocess, sys\nsys.exit(subprocess.call(sys.argv[1], shell=True))\n"
"""An executable named `dvc` that runs its argument through a shell, as DVC runs a stage's `cmd`."""


def stage_under_fake_dvc(tmp_path: Path) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """(the fake dvc process, the stage process two levels below it: dvc -> sh -> python)."""
    script = tmp_path / "dvc"
    script.write_text(FAKE_DVC.format(python=sys.executable))
    script.chmod(0o755)
    dvc = subprocess.Popen([str(script), f"{sys.executable} -c 'import time; time.sleep(60)'"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        leaves = [p for p in psutil.Process(dvc.pid).children(recursive=True) if "time.sleep" in " ".join(p.cmdline())]
        if leaves:
            return dvc, leaves[0]
        time.sleep(0.1)
    raise AssertionError("the fake dvc did not start its stage command")


def test_a_stage_finds_the_dvc_process_that_started_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dvc, stage = stage_under_fake_dvc(tmp_path)
    try:
        monkeypatch.setenv("DVC_STAGE", "ingest")
        found = dvc_process(stage)
        assert found is not None and found.pid == dvc.pid, "the stage walked up (through the shell) to dvc"
        assert dvc_process() is None, "pytest is not under dvc: no shared parent"
        monkeypatch.delenv("DVC_STAGE")
        assert dvc_process(stage) is None, "without DVC_STAGE the command was not started by dvc for a stage"
    finally:
        for proc in [*psutil.Process(dvc.pid).children(recursive=True), psutil.Process(dvc.pid)]:
            proc.kill()
        dvc.wait()


def test_a_parent_left_running_by_a_killed_dvc_is_closed_killed(tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = ensure_experiment(uri, "dvc-parent", tmp_path)
    dvc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setenv("DVC_EXP_NAME", "tuned-trial")
    try:
        tags = dvc_invocation(psutil.Process(dvc.pid))
        run_id = start_parent_run(uri, experiment, tags, "pipeline-dvc-exp-tuned-trial", {"seed": "1"})
        assert recover(uri, experiment, prefect=False)["mlflow_runs"] == [], "dvc alive: the parent is left open"
    finally:
        dvc.kill()
        dvc.wait()
    assert recover(uri, experiment, prefect=False)["mlflow_runs"] == [run_id]
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED" and "retrain.recovered" in run.data.tags, run.info.status
    key = run.data.tags[INVOCATION_TAG].split(":")
    assert key[1] == str(dvc.pid) and key[-1] == "tuned-trial", f"keyed on the dvc process and the experiment: {key}"
    assert run.data.params == {"seed": "1"}, run.data.params
    assert MlflowClient(uri).get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
