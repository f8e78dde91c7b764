"""The early Prefect server: started before preflight, handed to Prefect's own temporary-server object, never orphaned.

Each case runs in a fresh interpreter with no PREFECT_API_URL (the suite's harness sets one in-process), a Prefect
home of its own and a marker in the environment, so any server child left behind is found in /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.prefect_server import ENV, start_early

ROOT = Path(__file__).resolve().parents[2]

HANDED_OVER = """
import logging
logging.basicConfig(level=logging.INFO)
from flows.prefect_server import hand_over, start_early
early = start_early()
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer
hand_over(early)
server = SubprocessASGIServer()
print("ports", early.port, server.port, server.running, early.adopted)

@flow
def answer() -> int:
    return 42

print("result", answer())
"""


def clean_env(tmp_path: Path, marker: str) -> dict[str, str]:
    """This environment without a Prefect API, with its own Prefect home and a marker the server child inherits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(tmp_path / "prefect"), "RETRAIN_TEST_MARKER": marker, "PYTHONPATH": str(ROOT)}


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes whose environment holds the marker."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            if f"RETRAIN_TEST_MARKER={marker}".encode() in environ.split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_the_early_server_is_the_one_prefect_uses_and_stops_at_exit(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-c", HANDED_OVER],
        cwd=ROOT,
        env=clean_env(tmp_path, marker),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ports = next(line for line in done.stdout.splitlines() if line.startswith("ports")).split()
    assert ports[1] == ports[2] and ports[3:] == ["True", "True"], f"Prefect's server object adopted it: {ports}"
    assert "result 42" in done.stdout, done.stdout
    assert f"http://127.0.0.1:{ports[1]}" in done.stderr, "the flow ran against the early server"
    assert "Starting temporary server" not in done.stderr, "Prefect must not start a second server"
    assert not processes_with(marker), "the server child outlived the process"


@pytest.mark.slow
def test_a_preflight_failure_leaves_no_server_behind(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--set", "candidates.no_such_key=1"],
        cwd=ROOT,
        env=clean_env(tmp_path, marker) | {"RETRAIN_ROOT": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2, f"a params typo exits 2: {done.returncode}\n{done.stderr[-2000:]}"
    assert "no_such_key" in done.stderr, done.stderr[-2000:]
    assert not processes_with(marker), "the early Prefect server outlived a failed preflight"


def test_no_early_server_when_an_api_is_configured_or_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_early() is None, "a configured Prefect API is used as is"
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert start_early() is None, "an API set in the imported Prefect's settings (the test harness) counts too"
    monkeypatch.setenv(ENV, "0")
    assert start_early() is None, f"{ENV}=0 leaves the start to Prefect"
