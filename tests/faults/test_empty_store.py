"""Concurrent first use of an empty MLflow store: N processes released at the same moment all succeed.

Each process does what a pipeline run does first (engine/context.py `ensure_experiment`, which makes the store
ready under the init lock of adapters/mlflow_store.py), then opens a run and reads the model registry. Without
the lock one of them dies in MLflow's schema migration (`table _alembic_tmp_experiments already exists`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e

PROCESSES = 3
CHILD = """
import sys, time
from pathlib import Path
barrier, uri, root, i = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
from mlflow.tracking import MlflowClient            # imports done before the barrier: the race is on the store
from engine.context import ensure_experiment
print("waiting", flush=True)
while not barrier.exists():
    time.sleep(0.005)
experiment = ensure_experiment(uri, "race", root)
client = MlflowClient(uri)
run = client.create_run(experiment, run_name=f"p{i}")
client.set_terminated(run.info.run_id)
client.search_registered_models(max_results=1)
print("ok", experiment, flush=True)
"""


def test_processes_starting_together_on_a_fresh_sqlite_store_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    barrier = tmp_path / "go"
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(barrier), uri, str(tmp_path), str(i)],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    try:
        for proc in procs:  # every child imported MLflow and waits at the barrier
            line = proc.stdout.readline()
            assert line.strip() == "waiting", f"child did not reach the barrier: {line!r} {proc.stderr.read()[-2000:]}"
        assert not db.exists(), "nothing touched the store before the barrier"
        barrier.touch()
        results = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, f"a process failed on the fresh store (exit {proc.returncode}):\n{err[-3000:]}"
        assert out.strip().startswith("ok"), out
    experiments = {out.split()[-1] for out, _ in results}
    assert len(experiments) == 1, f"every process found the same experiment: {experiments}"
    client = MlflowClient(uri)
    runs = client.search_runs(list(experiments), max_results=10)
    assert len(runs) == PROCESSES, f"{PROCESSES} runs expected in the shared store, found {len(runs)}"
    assert client.search_registered_models() == [], "the registry store was created and is readable (empty)"
    assert (db.parent / "mlflow.db.init.lock").exists(), "the init lock lives next to the database file"
