"""`scripts/servers.py` (`make servers`) on real processes: PostgreSQL, MLflow on it with proxied artifacts, Prefect
with a process worker, Dask; one full start/use/stop cycle on free ports in a temp root, and a start that fails."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import SERVERS_SCRIPT, free_port, servers_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = SERVERS_SCRIPT
TIMEOUT = 240  # seconds per health check: MLflow's first start on PostgreSQL migrates its schema (~25 s at load 2)

servers = servers_script()


def clean_env() -> dict[str, str]:
    """This environment without any Prefect/MLflow/servers settings the suite or a shell may carry."""
    dropped = ("PREFECT_", "MLFLOW_", "DASK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    for name in ("SERVERS", "PG_PORT", "RETRAIN_ROOT"):
        env.pop(name, None)
    return env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python scripts/servers.py ...` as `make servers` runs it."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


@pytest.fixture
def root() -> Iterator[Path]:
    """A project root the postgres OS user can enter (pytest's tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="retrain-servers-"))
    path.chmod(0o755)
    yield path
    run_script("stop", "--root", str(path), timeout=120)  # whatever a failed test left running
    shutil.rmtree(path, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    """True while any process of the group remains."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def api(url: str, body: bytes | None = None) -> object:
    """JSON answer of a GET (or a POST with a JSON body)."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_selection_adds_what_a_component_needs() -> None:
    cfg = servers.Config(root=Path(tempfile.gettempdir()) / "retrain-servers-none")
    assert servers.resolve_selection(["worker"], "auto", cfg) == (["prefect", "worker"], "sqlite")
    assert servers.resolve_selection(["mlflow", "postgres"], "auto", cfg) == (["postgres", "mlflow"], "postgres")
    assert servers.resolve_selection(["mlflow"], "postgres", cfg) == (["postgres", "mlflow"], "postgres")
    assert servers.parse_selection("all") == list(servers.COMPONENTS)
    with pytest.raises(SystemExit, match="unknown server"):
        servers.parse_selection("prefect,redis")


@pytest.mark.slow
def test_full_set_starts_healthy_serves_and_stops_without_leftovers(root: Path, tmp_path: Path) -> None:
    ports = {"prefect": free_port(), "mlflow": free_port(), "postgres": free_port(), "dask": free_port()}
    flags = [f"--{name}-port={port}" for name, port in ports.items()]
    flags += ["--dask-workers=2", "--mlflow-workers=1", f"--timeout={TIMEOUT}"]
    started = run_script("start", "--root", str(root), "--only", "all", *flags)
    state = root / ".retrain" / "servers"
    pids = {p.stem: json.loads(p.read_text())["pid"] for p in state.glob("*.pid")}
    postmaster = servers.pg_running(servers.Config(root=root))
    assert started.returncode == 0, f"start failed:\n{started.stderr[-5000:]}"
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if line.startswith("export ")
    )
    tracking, prefect_api = exports["MLFLOW_TRACKING_URI"], exports["PREFECT_API_URL"]
    assert (
        tracking == f"http://127.0.0.1:{ports['mlflow']}" and prefect_api == f"http://127.0.0.1:{ports['prefect']}/api"
    )
    assert set(pids) == {"prefect", "mlflow-postgres", "worker", "dask-scheduler", "dask-workers"}, pids
    assert postmaster is not None and postmaster[1] == ports["postgres"], postmaster

    status = run_script("status", "--root", str(root), "--only", "all")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert len(lines) == 5 and all(line.endswith("healthy") for line in lines), status.stdout

    # MLflow: a run and an artifact through the http tracking URI; the client only ever sees mlflow-artifacts:/
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    experiment = client.create_experiment("servers-check")
    run = client.create_run(experiment)
    (tmp_path / "note.txt").write_text("through the proxy")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.log_metric(run.info.run_id, "answer", 42.0)
    client.set_terminated(run.info.run_id)
    back = client.get_run(run.info.run_id)
    assert back.info.artifact_uri.startswith("mlflow-artifacts:/"), back.info.artifact_uri
    assert back.data.metrics["answer"] == 42.0
    local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "down"))
    assert Path(local).read_text() == "through the proxy"
    stored = list((state / "mlartifacts").rglob("note.txt"))
    assert len(stored) == 1, "the server's proxy wrote the artifact under its --artifacts-destination"

    # Prefect: the process pool exists and our worker polls it
    pool = api(f"{prefect_api}/work_pools/{servers.POOL}")
    assert pool["type"] == "process", pool
    workers = api(f"{prefect_api}/work_pools/{servers.POOL}/workers/filter", b"{}")
    assert [(w["name"], w["status"]) for w in workers] == [(servers.WORKER_NAME, "ONLINE")], workers

    # Dask: a function runs on one of the two workers
    from distributed import Client

    with Client(exports["DASK_SCHEDULER_ADDRESS"], timeout=30, set_as_default=False) as dask:
        assert dask.submit(pow, 2, 10).result(timeout=60) == 1024
        assert len(dask.scheduler_info()["workers"]) == 2

    # PostgreSQL: the optuna database takes a study
    import optuna

    study = optuna.create_study(study_name="servers-check", storage=exports["OPTUNA_STORAGE"])
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="servers-check", storage=exports["OPTUNA_STORAGE"]).trials) == 2

    stopped = run_script("stop", "--root", str(root), timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    alive = {name: pid for name, pid in pids.items() if group_alive(pid)}
    assert not alive, f"process groups left after stop: {alive}"
    assert servers.pg_running(servers.Config(root=root)) is None and not process_alive(postmaster[0])
    taken = {name: port for name, port in ports.items() if not port_free(port)}
    assert not taken, f"ports still listening after stop: {taken}"
    assert not list(state.glob("*.pid")), "stop removes the pid files"


@pytest.mark.slow
def test_a_taken_port_fails_the_start_loudly_and_stops_what_it_started(root: Path) -> None:
    pg_port, dask_port = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", dask_port))
        holder.listen()
        ports = [f"--postgres-port={pg_port}", f"--dask-port={dask_port}"]
        result = run_script("start", "--root", str(root), "--only", "postgres,dask", *ports, "--timeout=120")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"dask: 127.0.0.1:{dask_port} is in use" in result.stderr and "DASK_PORT" in result.stderr, result.stderr
    assert "stopping what this start began: postgres" in result.stderr, result.stderr
    assert servers.pg_running(servers.Config(root=root)) is None, "the PostgreSQL it had started is stopped"
    assert port_free(pg_port), "PostgreSQL's port is free again"
    assert not list((root / ".retrain" / "servers").glob("*.pid")), "no pid file names a process"
    assert "export" not in result.stdout, "no exports for servers that are not up"
