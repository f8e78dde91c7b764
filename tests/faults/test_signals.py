"""A `retrain run --json` stopped inside candidates by SIGKILL, SIGTERM or SIGINT leaves a true record.

Each case copies one prepared project (data stages and baselines done and cached), starts `retrain run` as a
real subprocess, waits until a `candidates/<family>` run of that process is RUNNING in MLflow, and signals it.
SIGKILL: the registry is untouched, and after one rerun (which completes) no run of the killed process is
RUNNING in any experiment. SIGTERM / SIGINT: exit 128 + signum, one JSON document on stdout with the status,
every run the process was inside ends KILLED (none RUNNING), no child process is left, the lock is free.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from engine import recovery
from engine.recovery import PID_TAG, RECOVERED_TAG
from tests.conftest import make_project, small_params
from tests.flows.ops_project import kill_group, output, start

pytestmark = pytest.mark.e2e

STOPPED = ("--set", "candidates.n_trials=4")  # a cache miss for candidates (the prepared project ran none)
RERUN = ("--set", "candidates.n_trials=1")  # the rerun only has to complete
DASK = ("--set", "runner.task_runner=dask", "--set", "runner.dask_workers=1")  # worker processes to orphan
# SIGINT back to its default first: a child inherits an ignored SIGINT (e.g. from a background parent), and
# `retrain` respects that as a shell's background job would; exec keeps the pid the test signals
LAUNCHER = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose data stages and baselines ran once, in-process (no flow, no subprocess): their results
    are in the Prefect cache, so each test's `retrain run` reaches candidates in seconds."""
    from engine.pipeline import standalone_stage
    from flows.dag import DAG
    from retrain.config import load_params

    params = small_params(candidates={"families": ["lightgbm"]})  # one family: the rerun completes sooner
    root = make_project(tmp_path_factory.mktemp("signals") / "proj", params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAIN_ROOT", str(root))
        patch.chdir(root)
        loaded = load_params(root / "params.yaml")
        for stage in DAG[: [s.name for s in DAG].index("candidates")]:
            standalone_stage(root, loaded, DAG, stage, "cli")
    return root


@pytest.fixture
def project(prepared: Path, tmp_path: Path, prefect_backend: None) -> Path:
    """A private copy of the prepared project (workspace, git, DVC, mlflow.db, stage cache) for one test."""
    root = tmp_path / "proj"
    shutil.copytree(prepared, root, symlinks=True)
    (tmp_path / "prefect").mkdir()
    return root


def launch(root: Path, *args: str, log: str, trials: tuple[str, ...] = STOPPED) -> subprocess.Popen[str]:
    """`retrain run --json ARGS` as a real process in its own session (SIGINT not ignored: see LAUNCHER)."""
    return start(root, *trials, *args, log=log, prefix=(sys.executable, "-c", LAUNCHER))


def runs_of(uri: str, pid: int) -> list[Run]:
    """Every MLflow run, in every experiment of the store, owned by process `pid`."""
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.`{PID_TAG}` = '{pid}'", max_results=1000)


def wait_for_family_run(uri: str, proc: subprocess.Popen[str], root: Path, timeout: float = 240) -> Run:
    """Poll the store until a `candidates/<family>` run of `proc` is RUNNING; that run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"retrain run ended (exit {proc.returncode}) before candidates: {err_tail(root)}")
        running = [
            r
            for r in runs_of(uri, proc.pid)
            if r.info.status == "RUNNING" and r.info.run_name.startswith("candidates/")
        ]
        if running:
            return running[0]
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING candidates/<family> run within {timeout}s")


def err_tail(root: Path, log: str = "run") -> str:
    """The end of a subprocess's stderr, for assertion messages."""
    path = root.parent / f"{log}.err"
    return path.read_text()[-3000:] if path.exists() else ""


def registered(client: MlflowClient) -> list[tuple[str, str, list[str]]]:
    """Every registered model version with its aliases: what a stopped run must not have changed."""
    versions = client.search_model_versions()
    return sorted((v.name, v.version, sorted(v.aliases)) for v in versions)


def flow_run_state(flow_run_id: str) -> str:
    """The Prefect flow run's state type, e.g. CRASHED."""
    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_run(flow_run_id).state_type.value


def test_sigkill_in_candidates_is_closed_by_the_next_run(project: Path) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    before = registered(client)
    killed = launch(project, log="run")
    try:
        family = wait_for_family_run(uri, killed, project)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        kill_group(killed)
    assert killed.returncode == -signal.SIGKILL
    left = {r.info.run_id: r for r in runs_of(uri, killed.pid) if r.info.status == "RUNNING"}
    assert family.info.run_id in left, "a SIGKILL leaves the family run RUNNING until recovery"
    names = {r.info.run_name for r in left.values()}
    assert {"candidates", family.info.run_name} <= names, f"stage and family runs left open: {names}"
    assert registered(client) == before, "the killed run registered nothing and moved no alias"

    rerun = launch(project, log="rerun", trials=RERUN)
    try:
        code = rerun.wait(timeout=600)
    finally:
        kill_group(rerun)
    out, err = output(project, "rerun")
    assert code in (0, 3), err[-3000:]  # 3: a gate rejected the candidate
    summary = json.loads(out)
    assert summary["status"] == "completed", "the rerun completes"
    assert set(summary["recovered"]["mlflow_runs"]) == set(left), "the rerun closes exactly the runs left open"
    ran = {s["name"]: s["status"] for s in summary["stages"]}
    assert ran["baselines"] == "cached" and ran["candidates"] == "ran", f"the killed stage runs again: {ran}"
    after = runs_of(uri, killed.pid)
    still = [f"{r.info.run_name} ({r.info.experiment_id})" for r in after if r.info.status == "RUNNING"]
    assert not still, f"runs of the killed process still RUNNING after one rerun: {still}"
    for run_id in left:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", f"{run.info.run_name}: a killed process's run ends KILLED"
        assert RECOVERED_TAG in run.data.tags, f"{run.info.run_name}: recovered runs say who closed them"
    flow_run_id = family.data.tags["retrain.prefect_flow_run_id"]
    assert summary["recovered"]["prefect_flow_runs"] == [flow_run_id]
    assert flow_run_state(flow_run_id) == "CRASHED", "the killed flow run is CRASHED in Prefect"


@pytest.mark.parametrize(
    ("signum", "status", "extra"),
    [(signal.SIGTERM, "killed", DASK), (signal.SIGINT, "interrupted", ())],
    ids=["SIGTERM-dask", "SIGINT"],
)
def test_a_signal_in_candidates_ends_every_run_killed_and_still_prints_the_summary(
    project: Path, signum: int, status: str, extra: tuple[str, ...]
) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    before = registered(client)
    proc = launch(project, *extra, log="run")
    try:
        family = wait_for_family_run(uri, proc, project)
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signum)
        code = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    out, err = output(project, "run")
    assert code == 128 + signum, f"exit {code}, want 128 + {signum}: {err[-3000:]}"
    doc = json.loads(out)  # exactly one JSON document: anything else on stdout fails here
    name = signal.Signals(signum).name
    assert (doc["status"], doc["signal"], doc["exit_code"]) == (status, name, 128 + signum), doc
    assert doc["stage"] == "candidates", f"the stage it was in: {doc.get('stage')}"
    assert [s["name"] for s in doc["stages"]] == ["ingest", "version", "validate", "split", "baselines"], doc["stages"]

    runs = runs_of(uri, proc.pid)
    open_runs = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert not open_runs, f"{name} left runs RUNNING: {open_runs}"
    by_name = {r.info.run_name: r for r in runs}
    stopped = [family.info.run_name, "candidates", "pipeline-cli"]
    statuses = {n: by_name[n].info.status for n in stopped}
    assert statuses == dict.fromkeys(stopped, "KILLED"), f"the runs it was inside end KILLED: {statuses}"
    assert by_name["pipeline-cli"].info.run_id == doc["mlflow_run_id"], "the summary names the parent run"
    assert by_name["ingest"].info.status == "FINISHED", "stages done before the signal stay FINISHED"
    assert registered(client) == before, "the stopped run registered nothing and moved no alias"

    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"{name} left child processes running: {[p.cmdline()[:4] for p in alive]}"
    if extra == DASK:
        assert len(children) >= 2, f"the Dask LocalCluster had worker processes: {children}"
    recovery.acquire(project, "test", "lock check", timeout=0).release()  # WorkspaceBusyError if still held
    state = flow_run_state(doc["prefect_flow_run_id"])
    assert state in ("CRASHED", "CANCELLED"), f"the flow run is {state} in Prefect, not final"
