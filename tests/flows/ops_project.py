"""One small temp project shared by the concurrency and crash-recovery tests, and `retrain` as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_project, small_params

_PROJECTS: dict[str, Path] = {}
RETRAIN = str(Path(sys.executable).parent / "retrain")


def shared_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's ops project (created once; tests must not assume which of them ran first)."""
    if "ops" not in _PROJECTS:
        base = tmp_path_factory.mktemp("ops")
        # two families keep each run short; logreg brings its own n_trials, lightgbm follows candidates.n_trials
        # (the serving gate's fresh-process load is covered elsewhere; it costs ~5 s per evaluate here)
        params = small_params(
            candidates={"families": ["lightgbm", "logreg"]}, evaluate={"gates": {"serving": {"enabled": False}}}
        )
        root = make_project(base / "proj", params)
        (base / "prefect").mkdir()
        _PROJECTS["ops"] = root
    return _PROJECTS["ops"]


def env_for(root: Path) -> dict[str, str]:
    """The subprocess environment: the project as root and its own Prefect home (ephemeral server DB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "RETRAIN_ROOT": str(root),
        "PREFECT_HOME": str(root.parent / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RETRAIN_LOCK_TIMEOUT": "600",
    }
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if api:  # the session's test server (prefect_backend): saves each subprocess ~15 s of ephemeral start-up
        env["PREFECT_API_URL"] = api
    return env


def start(root: Path, *args: str, log: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """`retrain run --json ARGS` in its own session (so a kill can reach the ephemeral server it starts).

    stdout/stderr go to `<log>.out` / `<log>.err` beside the project; `prefix` runs it through a launcher."""
    with (root.parent / f"{log}.out").open("w") as out, (root.parent / f"{log}.err").open("w") as err:
        return subprocess.Popen(
            [*prefix, RETRAIN, "run", "--json", *args],
            cwd=root,
            env=env_for(root),
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )


def output(root: Path, log: str) -> tuple[str, str]:
    """stdout and stderr of a finished subprocess started with `start`."""
    return (root.parent / f"{log}.out").read_text(), (root.parent / f"{log}.err").read_text()


def kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the process and anything it started (the ephemeral Prefect server), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
