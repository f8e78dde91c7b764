"""Local servers for the project: PostgreSQL, MLflow, Prefect and a process worker, Dask; start | stop | status.

`make servers` / `make servers-stop` / `make servers-status` call this. Everything binds to 127.0.0.1 unless
--host says otherwise, and nothing has authentication (docs/operations.md, "Local servers"). Each server runs
from the project's venv in its own process group, logs to .retrain/servers/<name>.log and has a pid file
there; PostgreSQL is a cluster in .retrain/servers/postgres run by pg_ctl. `start` waits for every health
check and stops what it started when one fails.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import ModuleType

logger = logging.getLogger("retrain.servers")

HOST = "127.0.0.1"
ROOT = Path(os.environ.get("RETRAIN_ROOT") or Path(__file__).resolve().parent.parent).resolve()
BIN = Path(sys.executable).parent
COMPONENTS = ("postgres", "mlflow", "prefect", "worker", "dask")
"""Start order; `stop` goes the other way."""
DEFAULT_SELECTION = "prefect,mlflow"
"""What `make servers` starts without SERVERS=: the Prefect server and the MLflow UI on the project's SQLite store."""
NEEDS = {"worker": ("prefect",)}
"""Components another one cannot run without (MLflow on PostgreSQL needs postgres: see `resolve_selection`)."""
POOL = "retrain-process"
WORKER_NAME = "retrain-worker"
PG_USER = "retrain"
PG_DATABASES = ("mlflow", "optuna")
PG_PACKAGE = "postgresql"
PROCESS_NAMES = ("worker", "dask-workers", "dask-scheduler", "mlflow", "mlflow-postgres", "prefect")
"""Pid/log file stems of the processes this script starts, in stop order (PostgreSQL is stopped by pg_ctl)."""


class StartError(RuntimeError):
    """A component could not be started or did not become healthy; the message says which and why."""


@dataclass(frozen=True)
class Config:
    """Where the servers listen and keep their state."""

    root: Path
    host: str = HOST
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pg_port: int = 5433
    dask_port: int = 8786
    dask_workers: int = 2
    mlflow_workers: int = 2
    mlflow_backend: str = "sqlite"
    timeout: float = 120.0

    @property
    def state(self) -> Path:
        """Pid files, logs, the PostgreSQL cluster and the proxied MLflow artifacts."""
        return self.root / ".retrain" / "servers"

    @property
    def pg_dir(self) -> Path:
        """The PostgreSQL cluster's directory (owned by the postgres OS user when we run as root)."""
        return self.state / "postgres"

    def pg_url(self, database: str) -> str:
        """SQLAlchemy URL of one database, psycopg2 named (SQLAlchemy 2.1's default driver is psycopg 3)."""
        return f"postgresql+psycopg2://{PG_USER}@{self.host}:{self.pg_port}/{database}"

    @property
    def prefect_api(self) -> str:
        """PREFECT_API_URL of the server."""
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        """The MLflow server (tracking URI on PostgreSQL, UI either way)."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def dask_address(self) -> str:
        """The Dask scheduler's address."""
        return f"tcp://{self.host}:{self.dask_port}"

    @property
    def mlflow_name(self) -> str:
        """Pid file stem: `mlflow` only for the SQLite UI, whose port adapters/mlflow_links.py links to."""
        return "mlflow-postgres" if self.mlflow_backend == "postgres" else "mlflow"


@dataclass(frozen=True)
class Launch:
    """One background process: its command, environment and the port it listens on."""

    name: str
    component: str
    command: list[str]
    port: int | None
    env: dict[str, str] = field(default_factory=dict)


def launches(cfg: Config) -> dict[str, Launch]:
    """Every process this script can start, by pid file stem."""
    prefect_env = {
        "PREFECT_HOME": str(cfg.root / ".retrain" / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": cfg.prefect_api,
    }
    host, workers = ["--host", cfg.host], ["--workers", str(cfg.mlflow_workers)]
    mlflow_sqlite = [
        *["ui", *host, "--port", str(cfg.mlflow_port), *workers],
        *["--backend-store-uri", f"sqlite:///{cfg.root / 'mlflow.db'}"],
        *["--default-artifact-root", (cfg.root / "mlartifacts").as_uri()],
    ]
    mlflow_postgres = [
        *["server", *host, "--port", str(cfg.mlflow_port), *workers],
        *["--backend-store-uri", cfg.pg_url("mlflow"), "--serve-artifacts"],
        *["--artifacts-destination", (cfg.state / "mlartifacts").as_uri()],
    ]
    no_dashboard = ["--host", cfg.host, "--no-dashboard"]
    prefect = ["server", "start", *host, "--port", str(cfg.prefect_port)]
    worker = ["worker", "start", "--pool", POOL, "--type", "process", "--name", WORKER_NAME]
    scheduler = ["scheduler", "--port", str(cfg.dask_port), *no_dashboard]
    dask_workers = [
        *["worker", cfg.dask_address, "--nworkers", str(cfg.dask_workers), "--nthreads", "1", *no_dashboard],
        *["--local-directory", str(cfg.state / "dask-worker-space")],
    ]
    worker_env = prefect_env | {"PREFECT_API_URL": cfg.prefect_api}
    items = [
        Launch("prefect", "prefect", [str(BIN / "prefect"), *prefect], cfg.prefect_port, prefect_env),
        Launch("mlflow", "mlflow", [str(BIN / "mlflow"), *mlflow_sqlite], cfg.mlflow_port),
        Launch("mlflow-postgres", "mlflow", [str(BIN / "mlflow"), *mlflow_postgres], cfg.mlflow_port),
        Launch("worker", "worker", [str(BIN / "prefect"), *worker, "--install-policy", "never"], None, worker_env),
        Launch("dask-scheduler", "dask", [str(BIN / "dask"), *scheduler], cfg.dask_port),
        Launch("dask-workers", "dask", [str(BIN / "dask"), *dask_workers], None),
    ]
    return {launch.name: launch for launch in items}


def component_launches(cfg: Config, component: str) -> list[Launch]:
    """The processes of one component under this config (MLflow: the one of the selected backend)."""
    if component == "mlflow":
        return [launches(cfg)[cfg.mlflow_name]]
    return [launch for launch in launches(cfg).values() if launch.component == component]


# ---- selection -----------------------------------------------------------------------------------------------


def parse_selection(text: str) -> list[str]:
    """`postgres,mlflow` or `all` to a list of known components; unknown names are an error."""
    names = [n.strip() for n in text.replace(" ", ",").split(",") if n.strip()]
    if names == ["all"]:
        return list(COMPONENTS)
    unknown = sorted(set(names) - set(COMPONENTS))
    if unknown:
        raise SystemExit(f"unknown server(s) {', '.join(unknown)}: choose from {', '.join(COMPONENTS)} or `all`")
    return [c for c in COMPONENTS if c in names]


def resolve_selection(selected: list[str], backend: str, cfg: Config) -> tuple[list[str], str]:
    """Add what selected components need and pick MLflow's store (auto: PostgreSQL when it is selected or up)."""
    chosen = set(selected)
    if backend == "auto":
        backend = "postgres" if "postgres" in chosen or pg_running(cfg) is not None else "sqlite"
    if "mlflow" in chosen and backend == "postgres" and "postgres" not in chosen:
        logger.info("adding postgres: MLflow's backend store is PostgreSQL")
        chosen.add("postgres")
    for component, needs in NEEDS.items():
        for need in needs:
            if component in chosen and need not in chosen:
                logger.info("adding %s: %s needs it", need, component)
                chosen.add(need)
    return [c for c in COMPONENTS if c in chosen], backend


# ---- pid files -----------------------------------------------------------------------------------------------


def read_state(cfg: Config, name: str) -> dict | None:
    """The pid file of a process this script started, if it names a live process running the recorded command."""
    path = cfg.state / f"{name}.pid"
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    command = state.get("command") or []
    return state if command and "\0".join(command) in cmdline else None


def read_pid(cfg: Config, name: str) -> int | None:
    """The live pid of a process this script started, or None."""
    state = read_state(cfg, name)
    return int(state["pid"]) if state else None


def with_running_ports(cfg: Config) -> Config:
    """The config with the ports (and MLflow store) of what is running here, so status/stop find what start began."""
    changes: dict[str, object] = {}
    for name, key in (("prefect", "prefect_port"), ("dask-scheduler", "dask_port")):
        state = read_state(cfg, name)
        if state and state.get("port"):
            changes[key] = int(state["port"])
    for name, backend in (("mlflow-postgres", "postgres"), ("mlflow", "sqlite")):
        state = read_state(cfg, name)
        if state:
            changes |= {"mlflow_port": int(state["port"]), "mlflow_backend": backend}
            break
    workers = read_state(cfg, "dask-workers")
    if workers and workers.get("nworkers"):
        changes["dask_workers"] = int(workers["nworkers"])
    running = pg_running(cfg)
    if running is not None:
        changes["pg_port"] = running[1]
    return replace(cfg, **changes)


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (so a start would not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_port(cfg: Config, component: str, port: int) -> None:
    """Fail before starting a component whose port is taken, naming the port and how to move it."""
    if not port_free(cfg.host, port):
        flag = {"postgres": "PG_PORT", "mlflow": "MLFLOW_PORT", "prefect": "PREFECT_PORT", "dask": "DASK_PORT"}
        raise StartError(
            f"{component}: {cfg.host}:{port} is in use; stop what holds it or choose another port "
            f"({flag.get(component, 'its port')}=... / --{component}-port)"
        )


# ---- PostgreSQL ----------------------------------------------------------------------------------------------


def pg_binaries() -> tuple[Path, Path]:
    """initdb and pg_ctl from PATH or the newest /usr/lib/postgresql/<major>/bin; a loud error naming the package."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)
    found = {}
    for name in ("initdb", "pg_ctl"):
        hit = shutil.which(name) or next((f"{d}/{name}" for d in dirs if os.access(f"{d}/{name}", os.X_OK)), None)
        if hit:
            found[name] = Path(hit)
    missing = [n for n in ("initdb", "pg_ctl") if n not in found]
    if missing:
        raise StartError(
            f"PostgreSQL server binaries not found: {', '.join(missing)} (looked on PATH and in "
            f"/usr/lib/postgresql/*/bin). Install the Debian package: `make postgres-deps` (also part of "
            f"`make test-deps`) as root, or `sudo apt-get install -y {PG_PACKAGE}`"
        )
    return found["initdb"], found["pg_ctl"]


def pg_prefix() -> list[str]:
    """`runuser -u postgres --` when we are root (initdb and postgres refuse to run as root), else nothing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise StartError("running as root and `runuser` (Debian util-linux) is missing: PostgreSQL cannot start")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StartError(
            f"running as root and there is no `postgres` OS user to run PostgreSQL as; the Debian package "
            f"creates it: `apt-get install -y {PG_PACKAGE}`"
        ) from None
    return ["runuser", "-u", "postgres", "--"]


def pg_run(cfg: Config, *command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as the cluster's owner; raise StartError with its output when it fails."""
    argv = [*pg_prefix(), *map(str, command)]
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout, cwd=cfg.pg_dir)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = cfg.pg_dir / "postgres.log"
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise StartError(f"postgres: `{' '.join(argv)}` failed: {exc.stderr or ''}{exc.stdout or ''}\n{tail}") from exc


def pg_running(cfg: Config) -> tuple[int, int] | None:
    """(postmaster pid, port) of this root's cluster when it runs, from its postmaster.pid."""
    try:
        lines = (cfg.pg_dir / "data" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid, port


def pg_prepare_dir(cfg: Config) -> None:
    """Create the cluster directory, owned by postgres when we are root, and check that user can reach it."""
    cfg.pg_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    shutil.chown(cfg.pg_dir, "postgres", "postgres")
    probe = subprocess.run([*pg_prefix(), "test", "-w", str(cfg.pg_dir)], capture_output=True)
    if probe.returncode != 0:
        closed = [str(p) for p in cfg.pg_dir.parents if p.exists() and not os.stat(p).st_mode & 0o001]
        raise StartError(
            f"postgres: the postgres OS user cannot enter {cfg.pg_dir} (not world-searchable: "
            f"{', '.join(closed) or 'a parent directory'}); chmod o+x those or pass --root elsewhere"
        )


def start_postgres(cfg: Config) -> None:
    """initdb (first time) and pg_ctl start on host:pg_port, then create the `mlflow` and `optuna` databases."""
    initdb, pg_ctl = pg_binaries()
    pg_prepare_dir(cfg)
    data = cfg.pg_dir / "data"
    if not (data / "PG_VERSION").is_file():
        logger.info("postgres: initdb %s (user %s, trust on %s only)", data, PG_USER, cfg.host)
        pg_run(cfg, initdb, "-D", data, "-U", PG_USER, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8")
    socket_dir = cfg.pg_dir if len(str(cfg.pg_dir)) + 20 < 107 else Path(tempfile.gettempdir())  # sun_path limit
    options = f"-h {cfg.host} -p {cfg.pg_port} -k {socket_dir}"
    log = cfg.pg_dir / "postgres.log"
    wait = ["-w", "-t", str(int(cfg.timeout))]
    pg_run(cfg, pg_ctl, "-D", data, "-l", log, *wait, "-o", options, "start", timeout=cfg.timeout + 10)
    create_databases(cfg)


def psycopg2_module() -> ModuleType:
    """psycopg2, or a loud error naming the extra that installs it."""
    try:
        import psycopg2
    except ImportError as exc:
        raise StartError("psycopg2 is missing: install the project's `postgres` extra (`make install`)") from exc
    return psycopg2


def create_databases(cfg: Config) -> None:
    """The `mlflow` and `optuna` databases, created when missing (each keeps its own alembic_version)."""
    psycopg2 = psycopg2_module()
    conn = psycopg2.connect(host=cfg.host, port=cfg.pg_port, user=PG_USER, dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in PG_DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    logger.info("postgres: created database %s", name)
    finally:
        conn.close()


def stop_postgres(cfg: Config) -> None:
    """pg_ctl stop -m fast (then immediate, then SIGKILL) for this root's cluster."""
    running = pg_running(cfg)
    if running is None:
        return
    began = time.monotonic()
    _, pg_ctl = pg_binaries()
    data = cfg.pg_dir / "data"
    for mode in ("fast", "immediate"):
        with contextlib.suppress(StartError):
            pg_run(cfg, pg_ctl, "-D", data, "-m", mode, "-w", "-t", "30", "stop", timeout=40)
        if pg_running(cfg) is None:
            break
    deadline = time.monotonic() + 10  # pg_ctl returns once postmaster.pid is gone; the process exits just after
    while _process_alive(running[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _process_alive(running[0]):
        logger.warning("postgres (pid %d) still up after pg_ctl stop; sending SIGKILL", running[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(running[0], signal.SIGKILL)
    logger.info("postgres stopped in %.1fs", time.monotonic() - began)


def _process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


# ---- health checks: None when healthy, else why not ----------------------------------------------------------


def http(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json" if body[:1] in (b"{", b"[") else "text/plain")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_postgres(cfg: Config) -> str | None:
    """A real connection to each database and `SELECT 1`."""
    try:
        psycopg2 = psycopg2_module()
    except StartError as exc:
        return str(exc)
    for name in PG_DATABASES:
        try:
            conn = psycopg2.connect(host=cfg.host, port=cfg.pg_port, user=PG_USER, dbname=name, connect_timeout=3)
            with conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            conn.close()
        except psycopg2.Error as exc:
            return f"database {name}: {str(exc).strip()}"
    return None


def check_mlflow(cfg: Config) -> str | None:
    """GET /health; on PostgreSQL also an artifact written, read back and deleted through the server's proxy."""
    try:
        status, _ = http(f"{cfg.mlflow_url}/health")
        if status != 200:
            return f"GET /health answered {status}"
        if cfg.mlflow_backend != "postgres":
            return None
        url = f"{cfg.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/.health/{uuid.uuid4().hex}.txt"
        payload = f"retrain servers health {time.time()}".encode()
        status, _ = http(url, "PUT", payload)
        if status != 200:
            return f"artifact upload through the proxy answered {status}"
        status, body = http(url)
        if status != 200 or body != payload:
            return f"artifact read back through the proxy: {status}, {len(body)} bytes"
        http(url, "DELETE")
    except (urllib.error.URLError, OSError) as exc:
        return f"{cfg.mlflow_url}: {exc}"
    return None


def check_prefect(cfg: Config) -> str | None:
    """GET /api/health."""
    try:
        status, body = http(f"{cfg.prefect_api}/health")
    except (urllib.error.URLError, OSError) as exc:
        return f"{cfg.prefect_api}/health: {exc}"
    return None if status == 200 else f"GET /api/health answered {status}: {body[:200]!r}"


def check_worker(cfg: Config) -> str | None:
    """The pool exists with type process, and our worker is ONLINE with a heartbeat sent since it was started."""
    try:
        status, body = http(f"{cfg.prefect_api}/work_pools/{POOL}")
        if status != 200:
            return f"work pool {POOL} not found ({status})"
        if json.loads(body).get("type") != "process":
            return f"work pool {POOL} is not of type process: {json.loads(body).get('type')}"
        status, body = http(f"{cfg.prefect_api}/work_pools/{POOL}/workers/filter", "POST", b"{}")
    except (urllib.error.URLError, OSError) as exc:
        return f"{cfg.prefect_api}: {exc}"
    workers = {w.get("name"): w for w in json.loads(body)} if status == 200 else {}
    worker = workers.get(WORKER_NAME)
    if worker is None:
        return f"worker {WORKER_NAME} not registered with pool {POOL} (workers: {sorted(workers)})"
    state = read_state(cfg, "worker") or {}
    beat = datetime.fromisoformat(worker["last_heartbeat_time"].replace("Z", "+00:00")).timestamp()
    if worker.get("status") != "ONLINE" or beat < float(state.get("started_at", 0)) - 1:
        return f"worker {WORKER_NAME}: {worker.get('status')}, no heartbeat since pid {state.get('pid')} started"
    return None


def check_dask(cfg: Config) -> str | None:
    """A distributed.Client connects to the scheduler and sees the expected number of workers."""
    try:
        socket.create_connection((cfg.host, cfg.dask_port), timeout=1).close()
    except OSError as exc:  # not listening yet: answer now rather than after the Client's connect timeout
        return f"scheduler {cfg.dask_address} not listening: {exc}"
    from distributed import Client

    try:
        with Client(cfg.dask_address, timeout=5, set_as_default=False) as client:
            count = len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError) as exc:
        return f"{cfg.dask_address}: {exc}"
    return None if count >= cfg.dask_workers else f"{count} of {cfg.dask_workers} workers connected"


CHECKS: dict[str, Callable[[Config], str | None]] = {
    "postgres": check_postgres,
    "mlflow": check_mlflow,
    "prefect": check_prefect,
    "worker": check_worker,
    "dask": check_dask,
}


# ---- start / stop / status -----------------------------------------------------------------------------------


def launch(cfg: Config, spec: Launch) -> subprocess.Popen:
    """Start one process in its own process group, output to its log, and write its pid file."""
    log = (cfg.state / f"{spec.name}.log").open("ab")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **spec.env}
    process = subprocess.Popen(
        spec.command,
        cwd=cfg.root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    state = {"pid": process.pid, "port": spec.port, "host": cfg.host, "command": spec.command}
    state["started_at"] = time.time()
    if spec.name == "dask-workers":
        state["nworkers"] = cfg.dask_workers
    (cfg.state / f"{spec.name}.pid").write_text(json.dumps(state))
    logger.info("%s: started pid %d%s", spec.name, process.pid, f" on {cfg.host}:{spec.port}" if spec.port else "")
    return process


def log_tail(cfg: Config, component: str) -> str:
    """The end of a component's logs, for an error message."""
    paths = [cfg.pg_dir / "postgres.log"] if component == "postgres" else []
    paths += [cfg.state / f"{spec.name}.log" for spec in component_launches(cfg, component)]
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in paths if p.is_file())


def wait_healthy(cfg: Config, component: str, processes: Iterable[subprocess.Popen], since: float) -> str | None:
    """One health poll: None when healthy; StartError if a process exited or `cfg.timeout` has passed since `since`."""
    dead = [p for p in processes if p.poll() is not None]
    if dead:
        raise StartError(f"{component}: exited with code {dead[0].returncode}\n{log_tail(cfg, component)}")
    reason = CHECKS[component](cfg)
    if reason is not None and time.monotonic() - since > cfg.timeout:
        raise StartError(f"{component}: not healthy after {cfg.timeout:.0f}s: {reason}\n{log_tail(cfg, component)}")
    return reason


def start(cfg: Config, selected: list[str]) -> int:
    """Start the selected components in dependency order, wait for each health check, print the exports."""
    cfg.state.mkdir(parents=True, exist_ok=True)
    wanted_backend, cfg = cfg.mlflow_backend, with_running_ports(cfg)  # what already runs here keeps its ports
    if "mlflow" in selected and cfg.mlflow_backend != wanted_backend:
        logger.warning(
            "an MLflow server on %s already runs here (port %d); stop it (`scripts/servers.py stop --only mlflow`) "
            "for one on %s",
            cfg.mlflow_backend,
            cfg.mlflow_port,
            wanted_backend,
        )
    started: list[str] = []
    try:
        if "postgres" in selected:
            began = time.monotonic()
            if pg_running(cfg) is None:
                require_port(cfg, "postgres", cfg.pg_port)
                started.append("postgres")
                start_postgres(cfg)
            else:
                logger.info("postgres already running on port %d", cfg.pg_port)
                create_databases(cfg)
            while wait_healthy(cfg, "postgres", [], began) is not None:
                time.sleep(0.5)
            logger.info("postgres healthy after %.1fs", time.monotonic() - began)
        wait_for_processes(cfg, selected, started)
    except (StartError, KeyboardInterrupt) as exc:
        logger.error("%s", exc if isinstance(exc, StartError) else "interrupted")
        logger.error("stopping what this start began: %s", ", ".join(started) or "nothing")
        stop(cfg, started)
        return 1 if isinstance(exc, StartError) else 130
    sys.stdout.write(exports(cfg, selected))
    return 0


def wait_for_processes(cfg: Config, selected: list[str], started: list[str]) -> None:
    """Launch Prefect, MLflow and Dask together (ports checked first), the worker once Prefect answers; poll all."""
    first = [c for c in selected if c in ("prefect", "mlflow", "dask")]
    todo = {c: [s for s in component_launches(cfg, c) if read_pid(cfg, s.name) is None] for c in first}
    for component, specs in todo.items():
        if not specs:
            logger.info("%s already running (pid files in %s)", component, cfg.state)
        for spec in specs:
            if spec.port is not None:
                require_port(cfg, component, spec.port)
    processes: dict[str, list[subprocess.Popen]] = {}
    since: dict[str, float] = {}
    for component, specs in todo.items():
        since[component] = time.monotonic()
        for spec in specs:
            started.append(spec.name)
            processes.setdefault(component, []).append(launch(cfg, spec))
    pending = [c for c in ("prefect", "mlflow", "dask", "worker") if c in selected]
    while pending:
        for component in list(pending):
            if component == "worker" and "worker" not in since:
                if "prefect" in pending:
                    continue  # the worker registers with the API: it starts once Prefect answers
                since["worker"] = time.monotonic()
                [spec] = component_launches(cfg, "worker")
                if read_pid(cfg, spec.name) is None:
                    started.append(spec.name)
                    processes["worker"] = [launch(cfg, spec)]
            if wait_healthy(cfg, component, processes.get(component, []), since[component]) is None:
                logger.info("%s healthy after %.1fs", component, time.monotonic() - since[component])
                pending.remove(component)
        if pending:
            time.sleep(0.5)


def exports(cfg: Config, selected: list[str]) -> str:
    """What a user pastes into a shell to use these servers, and the matching `retrain run` overrides."""
    lines, sets = [], []
    if "prefect" in selected:
        lines.append(f"export PREFECT_API_URL={cfg.prefect_api}")
    if "mlflow" in selected and cfg.mlflow_backend == "postgres":
        lines.append(f"export MLFLOW_TRACKING_URI={cfg.mlflow_url}")
        sets.append('tracking.tracking_uri="$MLFLOW_TRACKING_URI"')
    elif "mlflow" in selected:
        lines.append(f"# MLflow UI {cfg.mlflow_url} on the project's store sqlite:///{cfg.root / 'mlflow.db'}")
    if "postgres" in selected:
        lines.append(f"export OPTUNA_STORAGE={cfg.pg_url('optuna')}")
        sets.append('candidates.storage="$OPTUNA_STORAGE"')
    if "dask" in selected:
        lines.append(f"export DASK_SCHEDULER_ADDRESS={cfg.dask_address}")
        sets += ["runner.task_runner=dask", 'runner.dask_address="$DASK_SCHEDULER_ADDRESS"']
    if sets:
        lines.append("# retrain reads these as params: retrain run " + " ".join(f"--set {s}" for s in sets))
    lines.append(f"# logs and pid files in {cfg.state}; stop with `make servers-stop`")
    return "\n".join(lines) + "\n"


def stop(cfg: Config, names: Iterable[str] | None = None, grace: float = 15.0) -> int:
    """SIGTERM the clients' process groups, then the servers', wait up to `grace` seconds, SIGKILL what is left;
    then pg_ctl stop (every server's clients are gone by then)."""
    wanted = set(PROCESS_NAMES) | {"postgres"} if names is None else set(names)
    for wave in (("worker", "dask-workers"), ("dask-scheduler", "mlflow", "mlflow-postgres", "prefect")):
        pids = {}
        for name in (n for n in wave if n in wanted):
            pid = read_pid(cfg, name)
            (cfg.state / f"{name}.pid").unlink(missing_ok=True)
            if pid is not None:
                pids[name] = pid
                _signal_group(pid, signal.SIGTERM)
        began = time.monotonic()
        while any(_alive(pid) for pid in pids.values()) and time.monotonic() - began < grace:
            time.sleep(0.1)
        for name, pid in pids.items():
            if _alive(pid):
                logger.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", name, pid, grace)
                _signal_group(pid, signal.SIGKILL)
        if pids:
            logger.info("%s: stopped in %.1fs", ", ".join(pids), time.monotonic() - began)
    if "postgres" in wanted:
        stop_postgres(cfg)
    return 0


def status(cfg: Config, selected: list[str]) -> int:
    """Print each component's address, pid(s) and health; 0 when every selected component is healthy."""
    cfg = with_running_ports(cfg)
    addresses = {
        "postgres": cfg.pg_url("mlflow").rsplit("/", 1)[0],
        "mlflow": f"{cfg.mlflow_url} ({cfg.mlflow_backend})",
        "prefect": cfg.prefect_api,
        "worker": f"pool {POOL}",
        "dask": cfg.dask_address,
    }
    ok = True
    for component in COMPONENTS:
        if component == "postgres":
            running = pg_running(cfg)
            pids = [running[0]] if running else []
        else:
            pids = [p for s in component_launches(cfg, component) if (p := read_pid(cfg, s.name))]
        health = (CHECKS[component](cfg) or "healthy") if pids else "stopped"
        ok &= health == "healthy" or component not in selected
        pid_text = "/".join(map(str, pids)) or "-"
        sys.stdout.write(f"{component:<9} {addresses[component]:<42} pid {pid_text:<14} {health}\n")
    return 0 if ok else 1


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group this script created for the server (its pid is the group id)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _alive(pgid: int) -> bool:
    """True while any process of the server's group remains (the leader or the workers it spawned)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap the leader if this process started it, so it is not a zombie
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def env_int(name: str, default: int) -> int:
    """An integer default from the environment (PREFECT_PORT and friends), or the built-in one."""
    return int(os.environ.get(name) or default)


def main(argv: list[str] | None = None) -> int:
    """`python scripts/servers.py start|stop|status [--only ...]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (stores and .retrain/servers)")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma list of {','.join(COMPONENTS)}, or all (default $SERVERS, else {DEFAULT_SELECTION}); "
        "stop without --only stops everything",
    )
    parser.add_argument("--host", default=HOST, help="interface every server binds to (default 127.0.0.1)")
    parser.add_argument("--prefect-port", type=int, default=env_int("PREFECT_PORT", 4200))
    parser.add_argument("--mlflow-port", type=int, default=env_int("MLFLOW_PORT", 5000))
    parser.add_argument("--postgres-port", "--pg-port", type=int, default=env_int("PG_PORT", 5433))
    parser.add_argument("--dask-port", type=int, default=env_int("DASK_PORT", 8786))
    parser.add_argument("--dask-workers", type=int, default=env_int("DASK_WORKERS", 2))
    parser.add_argument("--mlflow-workers", type=int, default=env_int("MLFLOW_WORKERS", 2))
    parser.add_argument(
        "--mlflow-backend",
        choices=("auto", "postgres", "sqlite"),
        default=os.environ.get("MLFLOW_BACKEND") or "auto",
        help="auto: PostgreSQL (proxied artifacts) when postgres is selected or running, else the project's SQLite",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each health check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding to %s: these servers have no authentication (docs/operations.md)", args.host)
    cfg = Config(
        root=args.root.resolve(),
        host=args.host,
        prefect_port=args.prefect_port,
        mlflow_port=args.mlflow_port,
        pg_port=args.postgres_port,
        dask_port=args.dask_port,
        dask_workers=args.dask_workers,
        mlflow_workers=args.mlflow_workers,
        timeout=args.timeout,
    )
    if args.command == "stop":
        names = None if args.only is None else [n for c in parse_selection(args.only) for n in _names(c)]
        return stop(with_running_ports(cfg), names)
    text = args.only or os.environ.get("SERVERS") or DEFAULT_SELECTION
    selected, backend = resolve_selection(parse_selection(text), args.mlflow_backend, cfg)
    cfg = replace(cfg, mlflow_backend=backend)
    return start(cfg, selected) if args.command == "start" else status(cfg, selected)


def _names(component: str) -> list[str]:
    """Pid file stems of a component's processes (either MLflow store)."""
    return {"mlflow": ["mlflow", "mlflow-postgres"], "dask": ["dask-workers", "dask-scheduler"]}.get(
        component, [component]
    )  # postgres: its own name, stopped by pg_ctl


if __name__ == "__main__":
    sys.exit(main())
