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
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from adapters.mlflow_packaging import no_compile, pyfunc_kwargs
from retrain.config import ServingGate
from retrain.evaluation.gates import GateResult, skipped
from retrain.evaluation.latency import directory_size_mb
from retrain.serving.compiled import MODE_ENV

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
    return ServingCheck(root, model_dir, example, cfg=cfg).start().result(expected)


class ServingCheck:
    """The serving gate's fresh process, startable before its result is needed.

    Why: the child spends ~4 s importing MLflow, pandas and LightGBM on one core. Evaluate starts it before the
    other screening gates and collects it after them, so those seconds overlap the in-process scoring. The
    package is saved when the check starts, so a later move of `model_dir` does not change what is checked.
    """

    def __init__(self, root: Path, model_dir: Path, example: pd.DataFrame, *, cfg: ServingGate) -> None:
        self.root, self.model_dir, self.example, self.cfg = root, model_dir, example, cfg
        self.details: dict = {}
        self.failure: str | None = None
        self.process: subprocess.Popen | None = None
        self.exited_at: float | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._started = 0.0
        self._waiter: threading.Thread | None = None

    def start(self) -> ServingCheck:
        """Package the pyfunc into a temp dir and start the child loading it (returns at once)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="retrain-serving-")
        work = Path(self._tmp.name)
        saved = work / "model"
        try:
            with no_compile():  # MLflow loads the model here to check the input example
                mlflow.pyfunc.save_model(str(saved), **pyfunc_kwargs(self.root, self.model_dir, self.example))
        except Exception as exc:  # any packaging error is the gate's finding, not a crash of evaluate
            self.failure = f"packaging the pyfunc failed: {type(exc).__name__}: {_tail(str(exc))}"
            return self
        self.example.to_parquet(work / "example.parquet")
        self.details = {"package_mb": round(directory_size_mb(saved), 4), "rows": len(self.example)}
        command = [sys.executable, "-I", "-c", CHILD, str(saved), str(work / "example.parquet"), str(work / "out")]
        self._started = time.perf_counter()
        with open(work / "stderr.txt", "wb") as stderr:  # a file, not a pipe: a chatty child never blocks
            self.process = subprocess.Popen(
                command, cwd=work, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self._waiter = threading.Thread(target=self._wait, name="serving-check", daemon=True)
        self._waiter.start()
        return self

    def _wait(self) -> None:
        """Note when the child exits (its load-and-predict seconds do not include time spent waiting for it)."""
        assert self.process is not None
        self.process.wait()
        self.exited_at = time.perf_counter()

    def result(self, expected: np.ndarray | pd.DataFrame) -> GateResult:
        """Wait for the child (within timeout_seconds of its start) and compare its output with `expected`."""
        try:
            if self.failure is not None:
                return _fail(self.failure, {})
            assert self.process is not None and self._waiter is not None and self._tmp is not None
            self._waiter.join(max(0.0, self._started + self.cfg.timeout_seconds - time.perf_counter()))
            if self._waiter.is_alive():
                self.cancel()
                self.details["seconds"] = round(time.perf_counter() - self._started, 2)
                limit = self.cfg.timeout_seconds
                reason = f"the packaged model did not load and predict within timeout_seconds = {limit} s"
                return _fail(reason, self.details)
            assert self.exited_at is not None
            self.details["seconds"] = round(self.exited_at - self._started, 2)
            work = Path(self._tmp.name)
            if self.process.returncode != 0:
                stderr = (work / "stderr.txt").read_text(errors="replace")
                self.details["stderr_tail"] = _tail(stderr)
                return _fail(
                    f"loading or predicting in a fresh process failed (exit {self.process.returncode}): "
                    f"{_last_line(stderr)}",
                    self.details,
                )
            return _compare(_read_output(work / "out"), expected, self.details)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop the child if it still runs and remove the temp dir (also when screening stopped before serving)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def child_env() -> dict[str, str]:
    """This process's environment with pickle deserialization forced off (as in every retrain process).

    The compiled forest is off too: the check loads, predicts once and exits (a compile would only burn a core).
    """
    return {**os.environ, PICKLE_ENV: "false", MODE_ENV: "off"}


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
