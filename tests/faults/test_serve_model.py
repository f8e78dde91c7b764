"""`retrain serve-model` end to end: a version registered by promote's own code, served by the real command.

The server answers the model's own scores, listens on 127.0.0.1 only and exits 0 on SIGTERM. With one byte of the
version's stored booster.txt edited, the command exits 2 naming the version and the file, and nothing is served.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from retrain.serving.predict import ServingModel
from tests.faults.tiny_registry import register_tiny

REPO = Path(__file__).resolve().parents[2]
MODEL = "adult-income"
RETRAIN = str(Path(sys.executable).parent / "retrain")
START_SECONDS = 120.0


@dataclass
class Registered:
    """The registry (SQLite + file store), the probe rows and each version's local model dir and stored artifact."""

    uri: str
    X: pd.DataFrame
    model_dirs: dict[str, Path]
    stores: dict[str, Path]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """Version 1 (alias champion) of a tiny Adult LightGBM, logged, sealed and registered by promote's own code."""
    tiny = register_tiny(tmp_path_factory.mktemp("serve-model"), "serve-model", {"1": 10}, rows=1000, seed=3)
    uri, X, model_dirs, stores = tiny.uri, tiny.X, tiny.model_dirs, tiny.stores
    client = MlflowClient(uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    return Registered(uri, X.head(40).reset_index(drop=True), model_dirs, stores)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Started servers; any still running at the end is killed (its process group)."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(launched: list[subprocess.Popen], ref: str, uri: str, cwd: Path, port: int = 0) -> subprocess.Popen:
    """`retrain serve-model REF --json` as its own process group (stdout: the JSON line; stderr: the log)."""
    command = [RETRAIN, "serve-model", ref, "--tracking-uri", uri, "--port", str(port), "--json"]
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    launched.append(process)
    return process


def first_line(process: subprocess.Popen, seconds: float) -> str:
    """The first stdout line, or '' when the process exits (or the time runs out) without one."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            return process.stdout.readline()
        if process.poll() is not None:
            return process.stdout.readline()
    return ""


def listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of every socket listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def post(url: str, payload: dict) -> dict:
    """POST JSON, return the JSON answer (an HTTP error raises with its body)."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_serve_model_answers_the_model_scores_on_loopback_and_stops_on_sigterm(
    registered: Registered, launch: list[subprocess.Popen], tmp_path: Path
) -> None:
    server = start(launch, f"{MODEL}@champion", registered.uri, tmp_path)
    line = first_line(server, START_SECONDS)
    if not line:
        server.kill()
        pytest.fail(f"no listening line on stdout (exit {server.wait()}): {server.stderr.read()[-2000:]}")
    info = json.loads(line)
    assert info["host"] == "127.0.0.1" and info["version"] == "1" and info["model_name"] == MODEL, info
    assert listeners(info["port"]) == ["0100007F"], f"must listen on 127.0.0.1 only: {listeners(info['port'])}"
    X = registered.X
    want = ServingModel(registered.model_dirs["1"]).predict(X)
    split = json.loads(X.to_json(orient="split", index=False))
    got = post(f"{info['url']}/invocations", {"dataframe_split": split})["predictions"]
    diff = np.abs(np.asarray(got) - want).max()
    assert np.array_equal(np.asarray(got), want), f"served scores differ from ServingModel's: max |diff| {diff}"
    one = json.loads(X.head(1).to_json(orient="records"))
    single = post(f"{info['url']}/invocations", {"dataframe_records": one})["predictions"]
    assert single == [float(want[0])], f"single row: {single} vs {want[0]}"
    with urllib.request.urlopen(f"{info['url']}/ping", timeout=10) as response:
        assert response.status == 200
    os.killpg(server.pid, signal.SIGTERM)
    try:
        code = server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve-model did not stop within 20 s of SIGTERM")
    log = server.stderr.read()
    assert code == 0, f"SIGTERM must stop the server cleanly (exit 0), got {code}: {log[-2000:]}"
    assert "SIGTERM: stopping the server" in log, log[-2000:]
    assert not listeners(info["port"]), "the socket is closed after the stop"


def test_a_tampered_version_is_refused_naming_version_and_file_and_nothing_is_served(
    registered: Registered, launch: list[subprocess.Popen], tmp_path: Path
) -> None:
    booster = next(registered.stores["1"].rglob("booster.txt"))
    original = booster.read_bytes()
    booster.write_bytes(original.replace(b"Tree=0", b"Tree=0\n", 1))  # one byte: LightGBM would still parse it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = start(launch, f"{MODEL}/1", registered.uri, tmp_path, port)
    try:
        out, log = server.communicate(timeout=START_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve-model kept running on a tampered artifact: {listeners(port)}")
    finally:
        booster.write_bytes(original)  # the other test serves the untouched version
    assert server.returncode == 2, f"a tampered artifact must exit 2, got {server.returncode}: {log[-2000:]}"
    assert out == "", f"nothing may be served (no listening line): {out!r}"
    assert "version 1" in log and booster.relative_to(registered.stores["1"]).as_posix() in log, log[-2000:]
    assert "serving " not in log, f"the server must never start: {log[-2000:]}"
