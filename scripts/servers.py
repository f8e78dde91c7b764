"""Local Prefect server and MLflow UI for the project: start | stop | status, bound to 127.0.0.1 only.

`make servers` / `make servers-stop` call this. Each server runs from the project's venv in its own process
group, logs to .retrain/servers/<name>.log, and has a pid file there; start waits for the health checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("retrain.servers")

HOST = "127.0.0.1"
ROOT = Path(os.environ.get("RETRAIN_ROOT") or Path(__file__).resolve().parent.parent).resolve()
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Server:
    """One background server: how to start it and how to know it answers."""

    name: str
    port: int
    command: list[str]
    health_path: str
    env: dict[str, str]

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{HOST}:{self.port}"


def servers(root: Path, prefect_port: int, mlflow_port: int) -> list[Server]:
    """The Prefect server (state in <root>/.retrain/prefect) and the MLflow UI on the project's stores."""
    prefect = Server(
        name="prefect",
        port=prefect_port,
        command=[str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
        health_path="/api/health",
        env={
            "PREFECT_HOME": str(root / ".retrain" / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": f"http://{HOST}:{prefect_port}/api",
        },
    )
    mlflow = Server(
        name="mlflow",
        port=mlflow_port,
        command=[
            str(BIN / "mlflow"),
            "ui",
            "--host",
            HOST,
            "--port",
            str(mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            (root / "mlartifacts").as_uri(),
        ],
        health_path="/health",
        env={},
    )
    return [prefect, mlflow]


def state_dir(root: Path) -> Path:
    """Where pid files and logs live."""
    return root / ".retrain" / "servers"


def healthy(server: Server, timeout: float = 2.0) -> bool:
    """True when the server's health endpoint answers 200."""
    try:
        with urllib.request.urlopen(server.url + server.health_path, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_free(port: int) -> bool:
    """True when nothing listens on HOST:port (so a start would not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def read_pid(root: Path, name: str) -> int | None:
    """The pid of a server this script started, if its pid file names a live process started from our command."""
    path = state_dir(root) / f"{name}.pid"
    if not path.is_file():
        return None
    pid = int(json.loads(path.read_text())["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        cmdline = None
    if cmdline is None:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid
    return pid if name in cmdline else None


def start(root: Path, prefect_port: int, mlflow_port: int, timeout: float) -> int:
    """Start both servers in the background, wait for health, print the URLs; 1 if one does not come up."""
    directory = state_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    launched: list[Server] = []
    for server in servers(root, prefect_port, mlflow_port):
        if read_pid(root, server.name) is not None:
            logger.info("%s already running (pid file %s)", server.name, directory / f"{server.name}.pid")
            continue
        if not port_free(server.port):
            logger.error("%s: %s:%d is in use; pass another port or stop what holds it", server.name, HOST, server.port)
            return 1
        log = (directory / f"{server.name}.log").open("ab")
        process = subprocess.Popen(
            server.command,
            cwd=root,
            env={**os.environ, **server.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (directory / f"{server.name}.pid").write_text(
            json.dumps({"pid": process.pid, "port": server.port, "command": server.command})
        )
        launched.append(server)
    failed = []
    for server in servers(root, prefect_port, mlflow_port):
        deadline = time.monotonic() + timeout
        while not healthy(server):
            if time.monotonic() > deadline or read_pid(root, server.name) is None:
                failed.append(server.name)
                break
            time.sleep(0.5)
        else:
            logger.info("%s healthy after %.1fs", server.name, time.monotonic() - began)
    if failed:
        logger.error("%s did not answer its health check; see %s/<name>.log", ", ".join(failed), directory)
        stop(root)
        return 1
    prefect, mlflow = servers(root, prefect_port, mlflow_port)
    sys.stdout.write(
        f"Prefect UI  {prefect.url}\nMLflow UI   {mlflow.url}\n"
        f"export PREFECT_API_URL={prefect.url}/api\n"
        f"(logs and pid files in {directory}; stop with `make servers-stop`)\n"
    )
    return 0


def stop(root: Path, grace: float = 15.0) -> int:
    """SIGTERM each server's process group, wait up to `grace` seconds, then SIGKILL what is left."""
    directory = state_dir(root)
    for name in ("prefect", "mlflow"):
        pid = read_pid(root, name)
        (directory / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            continue
        began = time.monotonic()
        _signal_group(pid, signal.SIGTERM)
        while _alive(pid) and time.monotonic() - began < grace:
            time.sleep(0.2)
        if _alive(pid):
            logger.warning("%s (pid %d) ignored SIGTERM for %.0fs; sending SIGKILL", name, pid, grace)
            _signal_group(pid, signal.SIGKILL)
        logger.info("%s stopped in %.1fs", name, time.monotonic() - began)
    return 0


def status(root: Path, prefect_port: int, mlflow_port: int) -> int:
    """Print each server's pid and health; 0 when both are up."""
    up = 0
    for server in servers(root, prefect_port, mlflow_port):
        pid = read_pid(root, server.name)
        ok = healthy(server)
        up += ok
        sys.stdout.write(f"{server.name:<8} {server.url:<24} pid {pid or '-':<8} {'healthy' if ok else 'down'}\n")
    return 0 if up == 2 else 1


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


def main(argv: list[str] | None = None) -> int:
    """`python scripts/servers.py start|stop|status`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (stores and .retrain/servers)")
    parser.add_argument("--prefect-port", type=int, default=int(os.environ.get("PREFECT_PORT", 4200)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each health check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(message)s")
    root = args.root.resolve()
    if args.command == "start":
        return start(root, args.prefect_port, args.mlflow_port, args.timeout)
    if args.command == "stop":
        return stop(root)
    return status(root, args.prefect_port, args.mlflow_port)


if __name__ == "__main__":
    sys.exit(main())
