"""The serving thread rule (docs/serving.md, "Threads"), on real saved models of every family, through the path
that ships: a request runs on one thread (no pool spawned, no other thread woken), a batch of a row-wise family
runs on every core with scores bit-identical to one thread's, the other families' batches stay on one thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from retrain.models.calibrator import fit_calibrator
from retrain.models.estimators import (
    SERVE_ONE_THREAD_ROWS,
    available_cores,
    build_model,
    fit_meta,
    pipeline_scores,
    save_calibration,
    save_model,
    save_stacking,
)
from retrain.models.families import FAMILIES
from retrain.serving.flavor import load_serving_model
from retrain.serving.predict import ServingModel
from tests.unit.test_models import CATEGORICAL, NUMERIC, frame, task_target

ROOT = Path(__file__).resolve().parents[2]
FEATURES = [*NUMERIC, *CATEGORICAL]
BATCH_ROWS = 5 * SERVE_ONE_THREAD_ROWS
SINGLE_ROWS = 50

PARAMS = {
    "lightgbm": {"n_estimators": 60, "verbose": -1, "deterministic": True, "n_jobs": 1},
    "hgb": {"max_iter": 40, "random_state": 0, "early_stopping": False},
    "logreg": {"C": 1.0},
    "ridge": {"alpha": 1.0},
    "random_forest": {"n_estimators": 10, "min_samples_leaf": 3, "random_state": 0},
}
"""Small models of every base family; a family added to the registry needs an entry here (checked below)."""

BASES = sorted(name for name, family in FAMILIES.items() if not family.meta)
STACK = ("lightgbm", "hgb", "logreg")
MODELS = {
    **{name: (name,) for name in BASES},
    "stacking": STACK,
    "calibrated_hgb": ("hgb",),
}
"""Every model the tests load, with the families whose rules apply to it."""

PROBE = r"""
import json, os, sys, threading, time
import numpy  # its OpenBLAS starts a worker thread per extra core
NUMPY_THREADS = os.listdir("/proc/self/task")
import scipy.linalg  # scipy's own OpenBLAS, a second worker (imported by scikit-learn anyway)
SCIPY_THREADS = os.listdir("/proc/self/task")
import pandas as pd
from pathlib import Path
from retrain.serving.predict import ServingModel  # what the pyfunc loads (test_the_pyfunc_serves_...)

def cpu_by_thread():
    # {OS thread id: time on CPU so far}: schedstat's nanoseconds and time slices, else stat's clock ticks
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as handle:
                run, _, slices = handle.read().split()
            out[int(tid)] = (int(run), int(slices))
        except FileNotFoundError:
            try:
                with open(f"/proc/self/task/{tid}/stat") as handle:
                    fields = handle.read().rpartition(")")[2].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12]), 0)
            except FileNotFoundError:  # the thread ended meanwhile
                pass
    return out

def others_ran(before, after):
    # threads other than this one that were on a CPU between the two snapshots (new threads included)
    me = threading.get_native_id()
    return sorted(t for t, used in after.items() if t != me and used != before.get(t, (0, 0)))

def count():
    return len(os.listdir("/proc/self/task"))

def asleep():
    # the other threads' scheduler states: "R" is running or runnable (woken, e.g. an OpenMP worker leaving a
    # region the caller already left, but not yet given a CPU), "S"/"D" is blocked until something wakes it
    me, out = threading.get_native_id(), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                out[int(tid)] = handle.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            pass
    return all(state != "R" for tid, state in out.items() if tid != me)

def settle(timeout=60.0):
    # wait until every other thread is blocked and stays off the CPU for 0.2 s, so whatever runs during a
    # measurement was woken by it. Quiet alone is not enough on a loaded machine: the OpenMP worker of the last
    # LightGBM load still has to run to park itself after the caller returned (2-46 ms at load 17, probed), and
    # a runnable worker denied a CPU for 0.2 s looks quiet, then runs inside the next window (the hgb flake).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        start = cpu_by_thread()
        if asleep():
            time.sleep(0.2)
            if not others_ran(start, cpu_by_thread()) and asleep():
                return True
        else:
            time.sleep(0.01)
    return False

def names(tids):
    # "tid name (created by: step)" of the threads, for a failure message to name the library
    census("measuring")  # a thread reads its name only once it runs (jemalloc's names itself jemalloc_bg_thd)
    return [f"{tid} {COMMS.get(tid, '?')} (created by: {BORN.get(tid, '?')})" for tid in tids]

BORN, COMMS = {}, {}
def census(step, tids=None):
    # remember which step created each thread (OpenBLAS at numpy import, the LightGBM OpenMP worker at a load...)
    for tid in tids if tids is not None else os.listdir("/proc/self/task"):
        BORN.setdefault(int(tid), step)
        try:
            with open(f"/proc/self/task/{tid}/comm") as handle:
                COMMS[int(tid)] = handle.read().strip()
        except FileNotFoundError:
            pass

rows_file, singles, dirs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
ATTEMPTS = 3
census("importing numpy (OpenBLAS)", NUMPY_THREADS)
census("importing scipy (OpenBLAS)", SCIPY_THREADS)
census("imports")
X = pd.read_parquet(rows_file)
census("read_parquet")
rows = [X.iloc[[i]] for i in range(singles)]
served = {}
for name, path in dirs.items():
    served[name] = ServingModel(Path(path))
    census(f"loading {name}")
found = {name: {} for name in served}
loaded = count()
for name, model in served.items():  # every model's single rows before any batch: no pool exists yet
    attempts, before = [], count()  # a pool spawned by the first attempt still counts
    for _ in range(ATTEMPTS):  # a stray wake-up on a loaded machine hits one attempt; a woken pool hits each
        settled = settle()  # the OpenMP worker of a LightGBM load parks itself after the load returned
        start = cpu_by_thread()
        for row in rows:
            model.predict(row)
        end = cpu_by_thread()
        census(f"{name} single rows")
        attempts.append(names(others_ran(start, end)))
        if not attempts[-1]:
            break
    found[name].update(threads_loaded=loaded, threads_before=before, threads_after_singles=count(),
                       settled_singles=settled, others_ran_singles=attempts)
for name, model in served.items():
    attempts = []
    for _ in range(ATTEMPTS):
        settled = settle()
        start = cpu_by_thread()
        model.predict(X)
        census(f"{name} batch")
        attempts.append(names(others_ran(start, cpu_by_thread())))
        if not attempts[-1]:
            break
    found[name].update(others_ran_batch=attempts, threads_after_batch=count(), settled_batch=settled)
print(json.dumps(found))
"""
"""Load every model in one fresh interpreter as the pyfunc does (its `ServingModel`, without importing MLflow), then
run each model's single rows, then each model's batch, watching the process's OS threads (nothing is timed).

Single rows come before any batch, so no prediction has started a thread pool when they run: a pool started by
one model's single rows makes that model's thread count grow, and any other thread woken during them is seen.
(Loading LightGBM does start its OpenMP pool, as it would in a process of its own.) Before each measurement every
other thread must be blocked (not runnable) and off the CPU for 0.2 s (`settle`); a thread that runs anyway is
named with the step that created it. A measurement that sees another thread run is repeated, up to ATTEMPTS
times: what a prediction wakes runs in every attempt, a stray wake-up on a loaded machine (an OpenBLAS worker
seen once in CI at load ~2) in one. One interpreter for all the models instead of one each: the imports cost
~2-4 s an interpreter."""


def _fit(name: str, X: pd.DataFrame, y: np.ndarray) -> tuple[str, object]:
    """A fitted Pipeline of the family on its first task of binary / regression."""
    task = "binary" if "binary" in FAMILIES[name].tasks else "regression"
    target = y if task == "binary" else task_target(X, task)
    return task, build_model(name, PARAMS[name], NUMERIC, CATEGORICAL, task=task).fit(X, target)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every registered base family, a stacking model and a calibrated hgb, saved with the project's writers."""
    assert set(BASES) <= set(PARAMS), f"add the new families to PARAMS: {sorted(set(BASES) - set(PARAMS))}"
    root = tmp_path_factory.mktemp("served")
    X, y = frame(2000)
    fitted = {}
    with threadpool_limits(limits=1):
        for name in BASES:
            task, fitted[name] = _fit(name, X, y)
            save_model(fitted[name], name, FEATURES, root / name, task=task)
        scores = [pipeline_scores(fitted[b], X, "binary", 2) for b in STACK]
        meta = fit_meta(STACK, scores, y, "binary")
        save_stacking({b: fitted[b] for b in STACK}, meta, FEATURES, root / "stacking")
        save_model(fitted["hgb"], "hgb", FEATURES, root / "calibrated_hgb")
        save_calibration(root / "calibrated_hgb", fit_calibrator("isotonic", scores[1], y, "binary"))
    return {name: root / name for name in MODELS}


@pytest.fixture(scope="module")
def probes(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The PROBE's findings per model."""
    rows = tmp_path_factory.mktemp("rows") / "rows.parquet"
    frame(BATCH_ROWS, seed=3)[0].to_parquet(rows)
    dirs = json.dumps({name: str(path) for name, path in model_dirs.items()})
    args = [sys.executable, "-c", PROBE, str(rows), str(SINGLE_ROWS), dirs]
    # idle OpenMP workers sleep at once instead of spinning a while after each region: a prediction still wakes
    # them, which is what the probe looks for, and a spinning tail cannot be mistaken for one
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, f"the probe failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(MODELS))
def test_single_rows_run_on_one_thread(probes: dict[str, dict], name: str) -> None:
    found = probes[name]
    assert found["settled_singles"], f"{name}: the other threads never all went to sleep in 60 s before: {found}"
    assert found["threads_after_singles"] <= found["threads_before"], (
        f"{name}: {SINGLE_ROWS} single-row predictions started threads (a pool spawned): {found}"
    )
    assert not found["others_ran_singles"][-1], (
        f"{name}: other threads ran during single-row predictions in each of the probe's attempts: {found}"
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_large_batches_use_every_core_only_where_scores_stay_identical(probes: dict[str, dict], name: str) -> None:
    found = probes[name]
    parallel = any(FAMILIES[f].threads.parallel_batches for f in MODELS[name]) and available_cores() >= 2
    if parallel:
        assert all(found["others_ran_batch"]), (
            f"{name}: a {BATCH_ROWS}-row batch ran on one of {available_cores()} cores: {found}"
        )
    else:
        assert found["settled_batch"], f"{name}: the other threads never all went to sleep in 60 s before: {found}"
        assert not found["others_ran_batch"][-1], f"{name}: its batches must stay on one thread: {found}"


def test_the_pyfunc_serves_through_the_probed_serving_model(model_dirs: dict[str, Path]) -> None:
    pyfunc = load_serving_model(model_dirs["stacking"])  # what the latency gate times (tasks/evaluate.py)
    assert type(pyfunc) is ServingModel, "the probe loads what the pyfunc serves"
    row = frame(5, seed=2)[0].head(1)
    assert np.array_equal(pyfunc.predict(row), ServingModel(model_dirs["stacking"]).predict(row))


@pytest.mark.parametrize("name", ["lightgbm", "hgb", "stacking", "calibrated_hgb"])
def test_batch_on_every_core_equals_one_thread_requests(model_dirs: dict[str, Path], name: str) -> None:
    served = load_serving_model(model_dirs[name])
    X = frame(3 * SERVE_ONE_THREAD_ROWS + 7, seed=11)[0]
    batch = served.predict(X)  # more than SERVE_ONE_THREAD_ROWS rows: every core (2 on CI)
    chunks = [X.iloc[i : i + SERVE_ONE_THREAD_ROWS] for i in range(0, len(X), SERVE_ONE_THREAD_ROWS)]
    requests = np.concatenate([served.predict(chunk) for chunk in chunks])  # each on one thread
    assert np.array_equal(batch, requests), f"{name}: {available_cores()} threads changed the batch scores"
