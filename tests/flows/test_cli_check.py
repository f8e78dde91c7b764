"""`retrain check`, and the same preflight at the start of `retrain run` / `retrain stage`, before Prefect starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from flows.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("prefect", "mlflow", "lightgbm", "sklearn", "great_expectations") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def project(tmp_path: Path) -> Path:
    """A folder that is a project root (params.yaml + dvc.yaml) with one small table and a bad params file."""
    rng = np.random.default_rng(1)
    n = 300
    pd.DataFrame(
        {"age": rng.integers(18, 80, n), "city": rng.choice(["a", "b"], n), "y": rng.integers(0, 2, n)}
    ).to_csv(tmp_path / "t.csv", index=False)
    bad = {
        "dataset": {"name": "toy", "task": "binary", "target": "y", "positive_label": 1, "slices": ["cty"]},
        "ingest": {"source": "t.csv"},
        "evaluate": {"gates": {"directional": {"increasing": ["agge"]}}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def retrain(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI entry point in a fresh interpreter rooted at `root`; also report heavy imports."""
    env = {**os.environ, "RETRAIN_ROOT": str(root), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.perf_counter() - started


def test_run_with_three_problems_exits_2_before_prefect_with_nothing_written(tmp_path: Path) -> None:
    root = project(tmp_path)
    before = sorted(p.name for p in root.iterdir())
    done, seconds = retrain(root, "run")
    assert done.returncode == 2, done.stderr
    for key in ("dataset.positive_label", "dataset.slices", "evaluate.gates.directional.increasing"):
        assert key in done.stderr, f"{key} not named in one message:\n{done.stderr}"
    assert "3 problems" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, "a config error is a message, not a traceback"
    assert "HEAVY=\n" in done.stdout or done.stdout.strip() == "HEAVY=", f"heavy libraries imported: {done.stdout}"
    assert sorted(p.name for p in root.iterdir()) == before, "nothing may be written"
    print(f"retrain run preflight failure: {seconds:.2f}s wall including interpreter start")


def test_check_and_stage_report_the_same(tmp_path: Path) -> None:
    root = project(tmp_path)
    check, _ = retrain(root, "check")
    stage, _ = retrain(root, "stage", "ingest")
    assert check.returncode == 2 and stage.returncode == 2, (check.stderr, stage.stderr)
    assert "dataset.slices" in check.stderr and "dataset.slices" in stage.stderr


def test_check_passes_on_the_shipped_params_and_shows_defaults(tmp_path: Path) -> None:
    env = {**os.environ, "RETRAIN_ROOT": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "check", "--show"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["evaluate"]["selection"]["tie_tolerance"] >= 0, "the resolved params include defaults"
    assert "OK" in done.stderr
