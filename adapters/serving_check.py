"""The serving gate: the model, packaged exactly as `promote` will register it, loads in a fresh process.

The gate saves the pyfunc with `adapters.mlflow_packaging.pyfunc_kwargs` (the arguments `promote` logs it with)
into a temp directory, then a new `sys.executable -I` process (no state shared with this one, pickle
deserialization off: MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false) loads it with `mlflow.pyfunc.load_model`, which
imports the loader module `retrain.serving.flavor` from the installed package, and predicts on the input example.
It passes only if that works and the output equals the scores evaluation measured.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from adapters.mlflow_packaging import pyfunc_kwargs
from retrain.config import ServingGate
from retrain.evaluation.gates import GateResult, skipped
from retrain.evaluation.latency import directory_size_mb

logger = logging.getLogger(__name__)

GATE = "serving"
"""The gate's name in the gate record (its key in `evaluate.gates`)."""
RTOL = 1e-9
ATOL = 1e-12
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
STDERR_TAIL = 600
"""Characters of the child's stderr kept in the reason (the last line names the error)."""

CHILD = """
import sys
import numpy as np
import pandas as pd
import mlflow.pyfunc

model_path, example_path, out_path = sys.argv[1:4]
model = mlflow.pyfunc.load_model(model_path)
output = model.predict(pd.read_parquet(example_path))
if isinstance(output, pd.Series):
    output = output.to_frame()
if isinstance(output, pd.DataFrame):
    output.set_axis([str(c) for c in output.columns], axis=1).to_parquet(out_path + ".parquet")
else:
    np.save(out_path + ".npy", np.asarray(output), allow_pickle=False)
"""
"""What the fresh process runs: load the saved pyfunc, predict, write the output without pickle."""


def serving_gate(
    root: Path, model_dir: Path, example: pd.DataFrame, expected: np.ndarray | pd.DataFrame, *, cfg: ServingGate
) -> GateResult:
    """Pass iff the packaged pyfunc loads in a fresh process and predicts `expected` on `example` (rtol 1e-9)."""
    if not cfg.enabled:
        return skipped(GATE, "serving gate disabled (evaluate.gates.serving.enabled: false)")
    with tempfile.TemporaryDirectory(prefix="retrain-serving-") as tmp:
        work = Path(tmp)
        saved = work / "model"
        try:
            mlflow.pyfunc.save_model(str(saved), **pyfunc_kwargs(root, model_dir, example))
        except Exception as exc:  # any packaging error is the gate's finding, not a crash of evaluate
            return _fail(f"packaging the pyfunc failed: {type(exc).__name__}: {_tail(str(exc))}", {})
        example.to_parquet(work / "example.parquet")
        details: dict = {"package_mb": round(directory_size_mb(saved), 4), "rows": len(example)}
        command = [sys.executable, "-I", "-c", CHILD, str(saved), str(work / "example.parquet"), str(work / "out")]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                cwd=work,
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=cfg.timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            details["seconds"] = round(time.perf_counter() - start, 2)
            return _fail(
                f"the packaged model did not load and predict within timeout_seconds = {cfg.timeout_seconds} s",
                details,
            )
        details["seconds"] = round(time.perf_counter() - start, 2)
        if done.returncode != 0:
            details["stderr_tail"] = _tail(done.stderr)
            return _fail(
                f"loading or predicting in a fresh process failed (exit {done.returncode}): {_last_line(done.stderr)}",
                details,
            )
        served = _read_output(work / "out")
    return _compare(served, expected, details)


def child_env() -> dict[str, str]:
    """This process's environment with pickle deserialization forced off (as in every retrain process).

    The compiled forest is off too: the check loads, predicts once and exits (a compile would only burn a core).
    """
    return {**os.environ, PICKLE_ENV: "false", "RETRAIN_COMPILED": "off"}


def _compare(served: np.ndarray, expected: np.ndarray | pd.DataFrame, details: dict) -> GateResult:
    """The served output against the scores evaluation measured: same shape, equal within rtol 1e-9."""
    want = expected.to_numpy(dtype=float) if isinstance(expected, pd.DataFrame) else np.asarray(expected, dtype=float)
    got = np.asarray(served, dtype=float)
    if got.ndim == 2 and got.shape[1] == 1 and want.ndim == 1:
        got = got[:, 0]
    details["shape"] = list(got.shape)
    if got.shape != want.shape:
        return _fail(f"served output has shape {got.shape}, expected {want.shape}", details)
    diff = np.abs(got - want)
    worst = int(np.nanargmax(diff.reshape(len(diff), -1).max(axis=1))) if diff.size and np.isfinite(diff).any() else 0
    max_diff = float(np.nanmax(diff)) if diff.size and np.isfinite(diff).any() else 0.0
    details["max_abs_diff"] = max_diff
    ok = bool(np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True))
    if ok:
        reason = (
            f"loads in a fresh process in {details['seconds']} s and predicts the example exactly "
            f"(max |diff| {max_diff:.2e})"
        )
    else:
        reason = (
            f"served predictions differ from evaluation's: max |diff| {max_diff:.3e} at example row {worst} "
            f"(allowed rtol {RTOL})"
        )
    return GateResult(GATE, max_diff, RTOL, ok, reason, None, "lower_is_better", details)


def _read_output(stem: Path) -> np.ndarray:
    """The child's output as a float array (DataFrame columns in their served order)."""
    table = stem.with_suffix(".parquet")
    if table.exists():
        return pd.read_parquet(table).to_numpy(dtype=float)
    return np.load(stem.with_suffix(".npy"), allow_pickle=False)


def _fail(reason: str, details: dict) -> GateResult:
    """A failed serving gate; the reason is logged too, since it usually means a broken package."""
    logger.warning("serving gate failed: %s", reason)
    return GateResult(GATE, None, RTOL, False, reason, None, "lower_is_better", details)


def _tail(text: str) -> str:
    """The end of a long message, where Python puts the exception."""
    text = text.strip()
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


def _last_line(stderr: str) -> str:
    """The exception line of a traceback (or the tail of whatever the child printed)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error output"
