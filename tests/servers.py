"""Helpers for tests that start a real server process (MLflow, Prefect, PostgreSQL): a free port, a health wait."""

from __future__ import annotations

import functools
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

SERVERS_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "servers.py"


@functools.cache
def servers_script() -> ModuleType:
    """`scripts/servers.py` (`make servers`; not a package) as a module, loaded once for the tests that use it."""
    spec = importlib.util.spec_from_file_location("servers_script", SERVERS_SCRIPT)
    assert spec is not None and spec.loader is not None, SERVERS_SCRIPT
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen, log: Path | None, timeout: float) -> None:
    """Poll a health URL until it answers 200; fail with the server's log (or stderr) if it dies or never answers."""

    def tail() -> str:
        if log is not None:
            return log.read_text()[-3000:]
        stderr = process.stderr.read().decode(errors="replace") if process.stderr and process.poll() is not None else ""
        return stderr[-3000:]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited {process.returncode}:\n{tail()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not healthy after {timeout}s:\n{tail()}")
