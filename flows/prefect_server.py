"""Prefect's temporary server, started before preflight so its start-up overlaps ours.

Why: with no PREFECT_API_URL, Prefect starts a temporary API server (uvicorn in a child process) when the flow
is first called, and waits for it: ~9 s on a quiet 2-core machine, most of it the child importing the server
and creating its database. `retrain run` knows seconds earlier that it will need one, so it starts the very
same command (Prefect's `SubprocessASGIServer` arguments, on 127.0.0.1) before preflight and the imports.
Once Prefect is imported, the process is handed to Prefect's own `SubprocessASGIServer` (which stops it at
exit, as always) and the flow finds its server already answering. Anything unexpected (a Prefect API set in a
profile, the child exiting, a Prefect that no longer has those attributes) stops the early child and leaves
Prefect to start its own: never a different server than Prefect would have used.

With PREFECT_API_URL set, nothing is started here: `require_api` checks instead that the server answers, so a
run against a server that is down stops in well under a second, before any stage and any MLflow or DVC write,
with a message naming the URL (docs/scaleout.md, "Failure modes").
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

ENV = "RETRAIN_EARLY_PREFECT_SERVER"
"""`0` turns the early start off (Prefect then starts its temporary server itself, as before)."""
PORTS = range(8000, 9000)
"""Prefect's own range for the temporary server's port."""
PROBE_TIMEOUT = 5.0
"""Seconds a configured Prefect API gets to answer /health before a run refuses to start."""
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
"""What Prefect sets for its temporary server (`SubprocessASGIServer._run_uvicorn_command`)."""


class PrefectUnreachableError(RuntimeError):
    """PREFECT_API_URL names a server that does not answer: the run did not start (exit 1)."""


def api_problem(api_url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the Prefect API at `api_url` cannot take a flow run (one GET /health, no retries), or None.

    Prefect Cloud (workspace URLs, an API key) is not probed; a self-hosted server that wants credentials
    (401/403) answers, and Prefect's client says the rest.
    """
    if (urlparse(api_url).hostname or "").endswith("prefect.cloud"):
        return None
    url = f"{api_url.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return None if answer.status == 200 else f"GET {url} answered HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return None
        if exc.code == 404:  # a server answers, but not Prefect's API (a URL without /api?)
            return f"GET {url} answered HTTP 404: is {api_url} a Prefect API root (it ends in /api)?"
        return f"GET {url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"GET {url} failed: {reason}"


def unreachable_message(api_url: str, problem: str) -> str:
    """What an operator reads when the configured Prefect server is down: the URL, the reason, the two ways out."""
    return (
        f"the Prefect server at PREFECT_API_URL={api_url} is not answering ({problem}). Nothing ran and nothing "
        "was written. Start it (`make servers`, or `prefect server start`) and retry, or unset PREFECT_API_URL "
        "to run on a temporary local Prefect server (that run is not kept in any UI)"
    )


def require_api(api_url: str | None, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise PrefectUnreachableError unless the configured Prefect API answers (None: the temporary server, fine)."""
    if not api_url:
        return
    started = time.perf_counter()
    problem = api_problem(api_url, timeout)
    if problem is not None:
        raise PrefectUnreachableError(unreachable_message(api_url, problem))
    logger.debug("Prefect API %s answered in %.2fs", api_url, time.perf_counter() - started)


def configured_api() -> str | None:
    """PREFECT_API_URL as Prefect resolves it (environment, profile, settings); imports Prefect's settings."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def free_port(host: str = "127.0.0.1", attempts: int = 20) -> int | None:
    """A port in Prefect's range nobody listens on (None after `attempts` taken ones)."""
    for _ in range(attempts):
        port = random.choice(PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return None


@dataclass
class EarlyServer:
    """The early child and whether Prefect has taken it over."""

    process: subprocess.Popen
    port: int
    started: float = field(default_factory=time.perf_counter)
    adopted: bool = False

    @property
    def api_url(self) -> str:
        """The API root Prefect's client talks to."""
        return f"http://127.0.0.1:{self.port}/api"

    def answering(self) -> bool:
        """One quick /api/health probe (no waiting)."""
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.api_url}/health", timeout=0.2) as answer:
            return answer.status == 200
        return False

    def healthy(self, timeout: float) -> bool:
        """Wait until /api/health answers 200 (False when the child exits or `timeout` passes first)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                return False
            if self.answering():
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the child unless Prefect owns it now (then Prefect stops it at exit)."""
        if self.adopted or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def api_configured_in_process() -> bool:
    """Whether an already imported Prefect has an API set (a test harness, an embedding app): free to ask then."""
    if "prefect.settings" not in sys.modules:
        return False  # importing Prefect to ask costs ~2 s; hand_over asks once it is imported anyway
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def start_early() -> EarlyServer | None:
    """Start Prefect's temporary server command now, unless a Prefect API is set in the environment or ENV=0."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get(ENV, "1") == "0" or api_configured_in_process():
        return None
    spec = importlib.util.find_spec("prefect")
    port = free_port()
    if spec is None or spec.origin is None or port is None:
        return None
    command = [
        sys.executable, "-m", "uvicorn",
        "--app-dir", str(Path(spec.origin).parent.parent),
        "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    early = EarlyServer(subprocess.Popen(command, env={**os.environ, **SERVER_ENV}), port)
    atexit.register(early.stop)  # preflight failed, or anything else before Prefect took it over
    return early


def while_booting(early: EarlyServer | None, steps: Sequence[tuple[str, Callable[[], object]]]) -> list[str]:
    """Run work the flow does anyway (imports, opening the MLflow store), in order, while the early server boots.

    It costs the same here or in the flow; here it overlaps the server's start-up instead of following it. No step
    starts once the server answers (the flow is then only waiting for these). Returns the names of the steps run.
    """
    done: list[str] = []
    if early is None:
        return done
    for name, step in steps:
        if early.process.poll() is not None or early.answering():
            break
        step()
        done.append(name)
    logger.debug("done while the Prefect server booted: %s", done)
    return done


def hand_over(early: EarlyServer | None) -> None:
    """Give the early child to Prefect's SubprocessASGIServer when Prefect would start a temporary server itself."""
    if early is None:
        return
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        early.stop()  # a profile names a Prefect API: the flow uses that one
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's clients start and use (no port given)
    attributes = all(hasattr(server, a) for a in ("running", "port", "server_process"))
    if not attributes or server.running:
        early.stop()
        return
    if not early.healthy(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()):
        logger.info("the early Prefect server did not answer; Prefect starts its own")
        early.stop()
        return
    server.port, server.server_process, server.running = early.port, early.process, True
    early.adopted = True
    atexit.register(server.stop)  # as SubprocessASGIServer.start does
    logger.info(
        "Prefect temporary server on http://127.0.0.1:%d (started %.1f s ago, before preflight)",
        early.port,
        time.perf_counter() - early.started,
    )
