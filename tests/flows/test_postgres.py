"""End to end on PostgreSQL: MLflow tracking + registry and the Optuna studies in a real PostgreSQL 15 server.

The server is the Debian one (initdb + pg_ctl), started once for this module in a temp dir on 127.0.0.1 and
a free port, and stopped at the end even on failure. Nothing here skips: `make test` installs the Debian package
first (`make test-deps` -> `postgres-deps`), and anything still missing fails the module, naming the package and
the command that installs it. See docs/tracking.md ("PostgreSQL").
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from tests.conftest import gates_off, make_project, small_params
from tests.servers import free_port, servers_script

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)
MODEL = "adult-income"
FAMILIES = ["logreg"]  # one family and the cheap gates: this module is about where things are stored
TRIALS = 2
USER = "retrain"
INSTALL = "Install Debian's `postgresql` package: `make test-deps` as root, or `sudo apt-get install -y postgresql`."


@dataclass(frozen=True)
class Postgres:
    """A running throwaway server: where it listens and how long it took to come up."""

    port: int
    startup_seconds: float

    def url(self, database: str) -> str:
        """SQLAlchemy URL of one database, psycopg2 driver named (SQLAlchemy 2.1's default is psycopg 3)."""
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{database}"


def server_binaries() -> tuple[Path, Path] | str:
    """initdb and pg_ctl as `make servers` finds them (scripts/servers.py `pg_binaries`), or why they are missing."""
    script = servers_script()
    try:
        return script.pg_binaries()
    except script.StartError as exc:
        return str(exc)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL on 127.0.0.1 with databases `mlflow` and `optuna` (one each: both keep an `alembic_version`)."""
    binaries = server_binaries()
    if isinstance(binaries, str):
        pytest.fail(binaries, pytrace=False)
    try:
        import psycopg2
    except ImportError:
        pytest.fail("psycopg2 is missing: install the project's `postgres` extra (`make install`)", pytrace=False)
    initdb, pg_ctl = binaries
    # initdb and postgres refuse to run as root: run them as the `postgres` OS user, in a dir it can enter
    # (pytest's tmp dirs are 0700 root, so the cluster lives in its own mkdtemp under the system tmp)
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        pytest.fail(
            "running as root, and `runuser` (needed to start PostgreSQL as the postgres user) is missing: "
            "install Debian's `util-linux` (`apt-get install -y util-linux`)",
            pytrace=False,
        )
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="retrain-pg-"))
    if as_root:
        try:
            shutil.chown(base, "postgres", "postgres")
        except LookupError:
            shutil.rmtree(base)
            pytest.fail(f"running as root and there is no `postgres` OS user to run it as. {INSTALL}", pytrace=False)
    data, port = base / "data", free_port()

    def run(*cmd: str | Path) -> None:
        subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, text=True, timeout=120)

    started = time.perf_counter()
    try:
        run(initdb, "-D", data, "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        options = f"-h 127.0.0.1 -p {port} -k {base} -F"  # TCP on loopback only, socket in tmp, no fsync
        run(pg_ctl, "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o", options, "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        subprocess.run([*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {exc.stderr}{exc.stdout}\n{log[-2000:]}") from exc
    server = Postgres(port, time.perf_counter() - started)
    logger.info("postgres: initdb + start %.2f s on port %d", server.startup_seconds, port)
    previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in ("mlflow", "optuna"):
                cur.execute(f"CREATE DATABASE {name}")
        conn.close()
        yield server
    finally:
        mlflow.set_tracking_uri(previous_uri)  # the flow set the global URI to this server, about to vanish
        try:
            run(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def test_missing_server_binaries_are_a_failure_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    message = server_binaries()
    assert isinstance(message, str) and "initdb, pg_ctl" in message, message
    assert "apt-get install -y postgresql" in message and "make test-deps" in message, message


def test_flow_tracks_registers_and_tunes_in_postgres(
    postgres: Postgres, tmp_path: Path, use_root, capsys, monkeypatch, prefect_backend: None
) -> None:
    import optuna

    from adapters import mlflow_audit as audit

    tracking, storage = postgres.url("mlflow"), postgres.url("optuna")
    params = small_params(
        tracking={"tracking_uri": tracking},
        candidates={"families": FAMILIES, "n_trials": TRIALS, "logreg": {"n_trials": TRIALS}, "storage": storage},
        evaluate=gates_off(),
    )
    project = use_root(make_project(tmp_path / "proj", params))

    code = main(["run", "--json"])
    out = capsys.readouterr().out
    assert code == 0, f"flow on PostgreSQL exited {code}: {out[-2000:]}"
    summary = json.loads(out)
    assert summary["tracking_uri"] == tracking, summary["tracking_uri"]
    (tmp_path / "summary.json").write_text(out)  # stage seconds, for a look after a slow run

    client = MlflowClient(tracking)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    moves = [e for e in audit.entries(tracking, MODEL) if e["alias"] == "champion"]
    assert [e["to_version"] for e in moves] == [str(champion.version)], f"one audited champion move: {moves}"
    assert not list(project.rglob("mlflow.db")), "tracking went to a SQLite mlflow.db, not PostgreSQL"

    # artifacts: a DB tracking URI without a server would put them in ./mlruns of the cwd; the experiment is
    # created with <project>/mlartifacts instead (engine/context.py ensure_experiment), wherever the cwd is
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    artifacts = (project / "mlartifacts").resolve()
    assert experiment.artifact_location == artifacts.as_uri(), f"artifacts not under the project: {experiment}"
    model_dir = Path(url2pathname(urlparse(client.get_model_version_download_uri(MODEL, champion.version)).path))
    assert (model_dir / "MLmodel").is_file() and model_dir.is_relative_to(artifacts), f"champion files: {model_dir}"
    mlflow.set_tracking_uri(tracking)
    record = mlflow.artifacts.load_dict(champion.tags["retrain.gate_record"])
    assert record["decision"] == "promote", record["decision"]
    assert not (project / "mlruns").exists(), "artifacts went to MLflow's default ./mlruns"

    [stage_run] = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'candidates'")
    studies = set(optuna.get_all_study_names(storage))
    assert studies == {f"{f}-{stage_run.info.run_id}" for f in FAMILIES}, f"Optuna studies in PostgreSQL: {studies}"
    for name in studies:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert len(trials) == TRIALS, f"{name}: {len(trials)} trials stored, {TRIALS} configured"


HOLDER = """
import sys, time
from adapters.registry_lock import registry_lock
with registry_lock(sys.argv[1], sys.argv[2], "postgres", 10, what="promote held by the test"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_registry_lock_is_an_advisory_lock_that_names_its_holder_and_dies_with_it(postgres: Postgres) -> None:
    import signal
    import sys

    from adapters.registry_lock import RegistryBusyError, registry_lock, resolve_kind

    uri = postgres.url("mlflow")
    assert resolve_kind("auto", uri) == "postgres", "a PostgreSQL store gets the advisory lock by default"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, MODEL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = holder.stdout.readline()
        assert line.strip() == "held", f"the holder process did not take the lock: {line!r} {holder.stderr.read()}"
        started = time.perf_counter()
        with pytest.raises(RegistryBusyError) as busy, registry_lock(uri, MODEL, "postgres", 1.5):
            pass
        waited = time.perf_counter() - started
        assert 1.5 <= waited < 10, f"waited {waited:.1f}s for a 1.5 s timeout"
        message = str(busy.value)
        assert f"pid {holder.pid}" in message and "promote held by the test" in message, (
            f"the timeout names the holder (application_name): {message}"
        )
        with registry_lock(uri, "another-model", "postgres", 1.0) as which:  # keyed on the model name
            assert "another-model" in which, which
        holder.send_signal(signal.SIGKILL)  # a killed holder: its connection drops and the server frees the lock
        holder.wait(timeout=30)
        with registry_lock(uri, MODEL, "postgres", 20.0) as which:
            assert "advisory lock" in which, which
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
