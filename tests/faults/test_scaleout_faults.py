"""The failure modes docs/scaleout.md claims, on real servers: a Prefect or MLflow server that is down when a run
starts, an MLflow tracking server (on PostgreSQL, started by scripts/servers.py) restarted while a stage runs, and
one that stays down past MLflow's HTTP retries.

Every `retrain run` here is a real subprocess (`--json`), the servers are real processes on free ports in a temp
root, and nothing is mocked. PostgreSQL comes from Debian's `postgresql` package (`make test-deps`): missing, the
module fails, naming it (tests/flows/test_postgres.py does the same).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from adapters import mlflow_audit as audit
from tests.conftest import gates_off, make_project, small_params
from tests.flows.ops_project import RETRAIN, env_for, kill_group
from tests.servers import SERVERS_SCRIPT, free_port, servers_script

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "adult-income"
TRIALS = 6  # logreg trials: candidates lasts long enough (~10 s) for the server to go down inside it
HEALTH_TIMEOUT = 240  # seconds: MLflow on PostgreSQL boots in 16-45 s on this 2-core box, longer under load
DOWN_PARAMS = "params.down.yaml"
# MLflow's HTTP retry settings for the "stays down" case: 2 retries with back-off factor 1 (waits 0 and 2 s) give up
# in ~2-3 s per call instead of ~4 min (the defaults, 7 and 2, are what the restart case runs with)
DOWN_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def params(tracking_uri: str | None = None, storage: str | None = None) -> dict:
    """Tiny params: one family (logreg), the cheap gates, optionally a tracking server and an Optuna storage."""
    candidates = {"families": ["logreg"], "n_trials": TRIALS, "logreg": {"n_trials": TRIALS}, "storage": storage}
    extra = {"tracking": {"tracking_uri": tracking_uri}} if tracking_uri else {}
    return small_params(candidates=candidates, evaluate=gates_off(), **extra)


def run_retrain(root: Path, *args: str, env: dict[str, str], timeout: float = 600) -> tuple[int, str, str, float]:
    """`retrain run --json ARGS` to its end: exit code, stdout, stderr, seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [RETRAIN, "run", "--json", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def workspace_state(root: Path) -> list[str]:
    """What a run that never started must not change: git status with ignored files, MLflow stores, outputs."""
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=root, capture_output=True, text=True)
    state = [line for line in status.stdout.splitlines() if line.strip()]
    outputs = ("mlflow.db", "mlruns", "mlartifacts", "models", "data/processed")
    return state + [path for path in outputs if (root / path).exists()]


# ---- a server down at the start ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A project no test may change (each asserts exactly that), and its state as made."""
    root = make_project(tmp_path_factory.mktemp("down") / "proj", params())
    down = params(f"http://127.0.0.1:{free_port()}")  # `retrain stage` has no --set: a params file of its own
    (root / DOWN_PARAMS).write_text(yaml.safe_dump(down, sort_keys=False))
    return root, workspace_state(root)


def quiet_env(root: Path, **extra: str) -> dict[str, str]:
    """The subprocess environment of ops_project without the session's Prefect API (each test sets its own)."""
    env = {k: v for k, v in env_for(root).items() if k != "PREFECT_API_URL"}
    return env | extra


def test_prefect_server_down_at_start_fails_fast_naming_it_and_writes_nothing(
    idle_project: tuple[Path, list[str]],
) -> None:
    idle_project, made = idle_project
    api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    code, out, err, seconds = run_retrain(idle_project, env=quiet_env(idle_project, PREFECT_API_URL=api))
    assert code == 1, f"exit {code}, want 1: {err[-3000:]}"
    assert seconds < 20, f"a down server is reported at once, before preflight and imports: took {seconds:.1f}s"
    doc = json.loads(out)
    assert doc["status"] == "failed" and doc["error_type"] == "ServerUnreachableError", doc
    for words in (f"PREFECT_API_URL={api}", "make servers", "unset PREFECT_API_URL", "Nothing ran"):
        assert words in doc["error"] and words in err, f"the message says {words!r}: {doc['error']}"
    assert "Traceback" not in err, f"a message, not a traceback: {err[-2000:]}"
    now = workspace_state(idle_project)
    assert now == made, f"a refused run changed the workspace: {sorted(set(now) ^ set(made))}"

    served = subprocess.run(
        [RETRAIN, "serve"], cwd=idle_project, env=quiet_env(idle_project, PREFECT_API_URL=api),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert served.returncode == 1, f"`retrain serve` on a down server: exit {served.returncode}: {served.stderr}"
    assert api in served.stderr and "make servers" in served.stderr, f"serve names the server: {served.stderr}"


def test_a_url_that_is_not_a_prefect_api_is_named_as_such() -> None:
    from flows.prefect_server import api_problem

    class NotFound(http.server.BaseHTTPRequestHandler):
        """Any GET: 404, as a web server that is not Prefect's API (or a URL without /api) answers."""

        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        problem = api_problem(url)
    finally:
        server.shutdown()
    assert problem is not None and "HTTP 404" in problem and "ends in /api" in problem, problem


def test_mlflow_server_down_at_start_fails_fast_naming_it_and_writes_nothing(
    idle_project: tuple[Path, list[str]],
) -> None:
    idle_project, made = idle_project
    uri = f"http://127.0.0.1:{free_port()}"
    env = quiet_env(idle_project, RETRAIN_EARLY_PREFECT_SERVER="0")  # no temporary Prefect server is needed
    code, out, err, seconds = run_retrain(idle_project, "--set", f"tracking.tracking_uri={uri}", env=env)
    assert code == 1, f"exit {code}, want 1: {err[-3000:]}"
    assert seconds < 30, f"reported after preflight, not after MLflow's ~4 min of retries: {seconds:.1f}s"
    doc = json.loads(out)
    assert doc["error_type"] == "ServerUnreachableError", doc
    for words in (f"tracking.tracking_uri={uri}", "make servers SERVERS=postgres,mlflow", "Nothing ran"):
        assert words in doc["error"], f"the message says {words!r}: {doc['error']}"
    now = workspace_state(idle_project)
    assert now == made, f"a refused run changed the workspace: {sorted(set(now) ^ set(made))}"

    stage = subprocess.run(
        [RETRAIN, "stage", "ingest", "--params", DOWN_PARAMS], cwd=idle_project, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stage.returncode == 1, f"`retrain stage` (dvc repro) on a down server: exit {stage.returncode}"
    assert "MLflow tracking server at" in stage.stderr and "Nothing ran" in stage.stderr, stage.stderr[-2000:]
    now = workspace_state(idle_project)
    assert now == made, f"a refused stage changed the workspace: {sorted(set(now) ^ set(made))}"


# ---- the MLflow tracking server restarts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """PostgreSQL + the MLflow tracking server on it, as `make servers SERVERS=postgres,mlflow` starts them."""

    root: Path
    mlflow_port: int
    pg_port: int

    @property
    def config(self) -> object:
        """`scripts/servers.py`'s view of these servers (the URLs `make servers` prints)."""
        return servers_script().Config(self.root, mlflow_port=self.mlflow_port, pg_port=self.pg_port)

    @property
    def tracking_uri(self) -> str:
        """The tracking server's URL."""
        return self.config.mlflow_url

    @property
    def optuna(self) -> str:
        """The Optuna storage in the same PostgreSQL."""
        return self.config.pg_url("optuna")

    def script(self, *args: str) -> subprocess.CompletedProcess:
        """`scripts/servers.py ARGS --root ROOT` with this environment minus any Prefect/MLflow settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DASK_"))}
        command = [sys.executable, str(SERVERS_SCRIPT), *args, "--root", str(self.root)]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    def start_mlflow(self) -> float:
        """Start (or start again) PostgreSQL and MLflow; seconds until healthy. A failure fails the test."""
        started = time.monotonic()
        ports = [f"--mlflow-port={self.mlflow_port}", f"--postgres-port={self.pg_port}", "--mlflow-workers=1"]
        done = self.script("start", "--only", "postgres,mlflow", *ports, f"--timeout={HEALTH_TIMEOUT}")
        assert done.returncode == 0, f"MLflow on PostgreSQL did not start:\n{done.stderr[-4000:]}"
        return time.monotonic() - started

    def stop_mlflow(self) -> None:
        """Stop the MLflow server only (SIGTERM, as `make servers-stop` does); PostgreSQL keeps running."""
        done = self.script("stop", "--only", "mlflow")
        assert done.returncode == 0, f"stopping MLflow failed: {done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """PostgreSQL and MLflow on it in a temp root (world-searchable for the postgres OS user), stopped at the end."""
    root = Path(tempfile.mkdtemp(prefix="retrain-faults-"))
    root.chmod(0o755)
    found = Servers(root, free_port(), free_port())
    try:
        found.start_mlflow()
        yield found
    finally:
        found.script("stop")
        shutil.rmtree(root, ignore_errors=True)


def launch(root: Path, env: dict[str, str], log: str) -> subprocess.Popen[str]:
    """`retrain run --json` in its own session, output to `<log>.out` / `<log>.err` beside the project."""
    with (root.parent / f"{log}.out").open("w") as out, (root.parent / f"{log}.err").open("w") as err:
        return subprocess.Popen(
            [RETRAIN, "run", "--json"], cwd=root, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )


def output(root: Path, log: str) -> tuple[str, str]:
    """stdout and stderr of a run started with `launch`."""
    return (root.parent / f"{log}.out").read_text(), (root.parent / f"{log}.err").read_text()


def runs_of(client: MlflowClient, pid: int) -> list[Run]:
    """Every run of process `pid`, in every experiment."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.`retrain.pid` = '{pid}'", max_results=1000)


def wait_for_family(client: MlflowClient, proc: subprocess.Popen[str], root: Path, log: str) -> Run:
    """Poll the server until `proc`'s `candidates/logreg` run is RUNNING; that run."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"retrain ended (exit {proc.returncode}) before candidates: {output(root, log)[1]}")
        running = [r for r in runs_of(client, proc.pid) if r.info.run_name == "candidates/logreg"]
        if running and running[0].info.status == "RUNNING":
            return running[0]
        time.sleep(0.2)
    raise AssertionError("no RUNNING candidates/logreg run within 300 s")


def test_mlflow_server_restart_mid_stage_the_run_completes_with_a_full_record(
    servers: Servers, tmp_path: Path, prefect_backend: None
) -> None:
    root = make_project(tmp_path / "proj", params(servers.tracking_uri, servers.optuna))
    client = MlflowClient(servers.tracking_uri)
    proc = launch(root, env_for(root), "run")  # MLflow's default HTTP retries (7, backoff factor 2)
    try:
        wait_for_family(client, proc, root, "run")
        down_at = time.time()
        servers.stop_mlflow()
        boot = servers.start_mlflow()
        up_at = time.time()
        code = proc.wait(timeout=600)
    finally:
        kill_group(proc)
    out, err = output(root, "run")
    assert code == 0, f"exit {code} after an MLflow restart of {boot:.0f}s: {err[-4000:]}"
    assert "Retrying" in err and "Connection refused" in err, "the client did meet the down server and retried"
    summary = json.loads(out)
    assert summary["status"] == "completed" and summary["promotion"] == "promoted", summary.get("promotion")

    runs = {r.info.run_name: r for r in runs_of(client, proc.pid)}
    stages = ["ingest", "version", "validate", "split", "baselines", "candidates", "evaluate", "promote"]
    expected = ["pipeline-cli", *stages, "candidates/logreg"]
    statuses = {name: runs[name].info.status if name in runs else "missing" for name in expected}
    assert statuses == dict.fromkeys(expected, "FINISHED"), f"every run FINISHED after the restart: {statuses}"
    logreg = runs["candidates/logreg"]
    assert logreg.info.start_time / 1000 < down_at and logreg.info.end_time / 1000 > up_at, (
        "the server went down inside the family's run and it ended after the server was back"
    )
    metric = params()["evaluate"]["metric"]
    for name in ("train_rows_per_s", "diagnostics_seconds"):
        assert name in logreg.data.metrics, f"the family's metrics are on its run: {sorted(logreg.data.metrics)}"
    parent = runs["pipeline-cli"]
    assert f"test_{metric}" in parent.data.metrics and "wall_seconds" in parent.data.metrics, (
        f"the parent's headline metrics: {sorted(parent.data.metrics)}"
    )
    artifacts = {f.path for f in client.list_artifacts(logreg.info.run_id)}
    assert {"diagnostics", "plots"} <= artifacts, f"the family's artifacts, through the proxy: {artifacts}"
    gate = {f.path for f in client.list_artifacts(runs["evaluate"].info.run_id)}
    assert "gate_record.json" in gate, f"evaluate's gate record: {gate}"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    tags = parent.data.tags
    assert (tags.get("retrain.promotion"), tags.get("retrain.model_version")) == ("promoted", champion.version), (
        f"the parent records the promotion of the champion version {champion.version}: {tags}"
    )
    moves = [e["to_version"] for e in audit.entries(servers.tracking_uri, MODEL) if e["alias"] == "champion"]
    assert moves == [champion.version], f"one audited champion move, to version {champion.version}: {moves}"


def test_mlflow_server_down_past_the_retries_fails_naming_it_and_the_next_run_resumes(
    servers: Servers, tmp_path: Path, prefect_backend: None
) -> None:
    root = make_project(tmp_path / "proj", params(servers.tracking_uri, servers.optuna))
    client = MlflowClient(servers.tracking_uri)
    before = sorted((v.name, v.version, sorted(v.aliases)) for v in client.search_model_versions())
    env = env_for(root) | DOWN_RETRIES  # gives up in seconds, not minutes
    proc = launch(root, env, "down")
    try:
        wait_for_family(client, proc, root, "down")
        servers.stop_mlflow()
        code = proc.wait(timeout=300)
    finally:
        kill_group(proc)
        servers.start_mlflow()
    out, err = output(root, "down")
    assert code == 1, f"exit {code}, want 1: {err[-4000:]}"
    doc = json.loads(out)
    assert doc["status"] == "failed", doc
    for words in (f"MLflow tracking server at {servers.tracking_uri}", "stopped answering", "make servers"):
        assert words in doc["error"], f"the failure says {words!r}: {doc['error'][:600]}"
    after = sorted((v.name, v.version, sorted(v.aliases)) for v in client.search_model_versions())
    assert after == before, f"the failed run registered nothing and moved no alias: {before} -> {after}"
    left = {r.info.run_id: r.info.run_name for r in runs_of(client, proc.pid) if r.info.status == "RUNNING"}
    assert "candidates/logreg" in left.values(), f"runs the down server could not close stay RUNNING: {left}"

    code, out, err, _ = run_retrain(root, env=env_for(root))  # the server is back: the same command again
    assert code == 0, f"the rerun exit {code}: {err[-4000:]}"
    summary = json.loads(out)
    assert set(summary["recovered"]["mlflow_runs"]) == set(left), "the rerun closes exactly the runs left open"
    ran = {s["name"]: s["status"] for s in summary["stages"]}
    assert ran["baselines"] == "cached" and ran["candidates"] == "ran", f"finished stages come from the cache: {ran}"
    statuses = {r.info.run_name: r.info.status for r in runs_of(client, proc.pid)}
    assert "RUNNING" not in statuses.values(), f"no run of the failed process stays RUNNING: {statuses}"
    assert client.get_model_version_by_alias(MODEL, "champion") is not None, "the rerun promoted a champion"
