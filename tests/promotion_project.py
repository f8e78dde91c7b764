"""One real flow run shared by the promotion tests: a small Adult project with a champion, copied per test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from adapters.jsonfile import read_json, write_json
from engine.context import tree_md5
from flows.cli import main
from tests.conftest import make_project, small_params

MODEL = "adult-income"
RECORD = "models/evaluate/gate_record.json"
FAMILIES = ["lightgbm", "logreg"]
_BUILT: dict[str, Path] = {}


def base_project(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project after ONE `retrain run` (champion = version 1), built once per test session."""
    if "base" not in _BUILT:
        root = make_project(
            tmp_path_factory.mktemp("promotion") / "proj", small_params(candidates={"families": FAMILIES})
        )
        monkeypatch.setenv("RETRAIN_ROOT", str(root))
        monkeypatch.chdir(root)
        code = main(["run"])
        assert code == 0, f"the shared first run must promote a champion (exit {code})"
        _BUILT["base"] = root
    return _BUILT["base"]


def copy_project(base: Path, dest: Path) -> Path:
    """A private copy (workspace, git, DVC, mlflow.db) so a test's registry changes stay its own.

    Artifacts stay in the base project's mlartifacts (absolute experiment location): the copy reads the
    base's models and writes new runs next to them under fresh run ids, which never collide.
    """
    shutil.copytree(base, dest, symlinks=True)
    return dest


def client(root: Path) -> MlflowClient:
    """Registry client on the project's SQLite store."""
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def craft_record(
    root: Path, family: str, champion_version: str | None, decision: str = "promote", failed: list[str] | None = None
) -> dict[str, Any]:
    """Rewrite the gate record for another candidate family, as evaluate would, with the champion it saw."""
    record = read_json(root / RECORD)
    model_dir = f"models/candidates/{family}"
    record["candidate"] = {"family": family, "model_dir": model_dir, "model_hash": tree_md5(root / model_dir)}
    record["decision"], record["failed_gates"] = decision, list(failed or [])
    record["champion"] = None if champion_version is None else {"version": champion_version}
    write_json(root / RECORD, record)
    return record


def other_family(root: Path) -> str:
    """The candidate family that is not the first champion's (a second, different model to promote)."""
    first = client(root).get_model_version(MODEL, "1").tags["retrain.family"]
    [other] = [f for f in FAMILIES if f != first]
    return other


def probe(root: Path) -> pd.DataFrame:
    """A fixed probe set: the first 50 test rows, features only."""
    return pd.read_parquet(root / "data/processed/test.parquet").head(50).drop(columns=["income"])


def champion_predictions(root: Path) -> np.ndarray:
    """What models:/MODEL@champion serves for the probe set (through pyfunc, as deployed)."""
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return np.asarray(mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(probe(root)))


def cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """Run the CLI with --json and parse its stdout."""
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    try:
        return code, json.loads(out) if out.strip() else {}
    except ValueError:
        raise AssertionError(f"stdout is not one JSON document: {out[:500]!r}") from None
