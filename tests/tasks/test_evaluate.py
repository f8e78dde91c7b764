"""Candidates built to fail each gate are rejected, the failing gate is named and `champion` stays put.

One real flow run (Prefect, DVC, GX, MLflow in temp dirs, 2,500 Adult rows) makes a champion; then each bad
candidate is a real model saved where the candidates stage writes, and the real `evaluate` and `promote`
stages run on it through the CLI (`retrain stage ...`, what dvc repro calls).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.cli import main
from retrain.catalog import CANDIDATES, EVALUATED_MODEL, GATE_RECORD, SPLITS, VALID_SCORES
from retrain.config import load_params
from retrain.metrics import encode_target
from retrain.models.estimators import build_model, save_model
from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e
MODEL = "adult-income"
FAST = {"serving": {"enabled": False}, "champion": {"resamples": 200}}
"""The serving gate (a fresh process) is exercised by the flow run; here it would only add seconds per case."""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> Iterator[Path]:
    root = make_project(tmp_path_factory.mktemp("gates") / "proj", small_params())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRAIN_ROOT", str(root))
        mp.chdir(root)
        assert main(["run"]) == 0, "the first run promotes a champion"
        yield root


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def registry_state(root: Path) -> tuple[str, int]:
    """(champion version, number of registered versions)."""
    c = client(root)
    return c.get_model_version_by_alias(MODEL, "champion").version, len(c.search_model_versions(f"name = '{MODEL}'"))


@contextmanager
def edited(path: Path) -> Iterator[Path]:
    """Restore a file or directory after a case changed it, so cases stay independent."""
    backup = path.with_name(path.name + ".orig")
    (shutil.copytree if path.is_dir() else shutil.copy2)(path, backup)
    try:
        yield path
    finally:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        backup.rename(path)


@contextmanager
def gate_params(root: Path, gates: dict[str, Any]) -> Iterator[None]:
    """params.yaml with evaluate.gates changed for one case (FAST settings always on)."""
    with edited(root / "params.yaml") as path:
        params = yaml.safe_load(path.read_text())
        merged = params["evaluate"].setdefault("gates", {})
        for name, values in {**FAST, **gates}.items():
            merged[name] = {**merged.get(name, {}), **values}
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        yield


def train_valid(root: Path) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, Any]:
    dataset = load_params(root / "params.yaml").dataset
    train = pd.read_parquet(root / SPLITS["train"])
    valid = pd.read_parquet(root / SPLITS["valid"])
    return (
        train[dataset.features],
        encode_target(train[dataset.target], dataset),
        valid[dataset.features],
        encode_target(valid[dataset.target], dataset),
        dataset,
    )


@contextmanager
def candidate(root: Path, params: dict[str, Any], y_override: np.ndarray | None = None) -> Iterator[None]:
    """A real LightGBM candidate saved as the only family, with its valid scores, for one case."""
    X, y, X_valid, _, dataset = train_valid(root)
    model = build_model("lightgbm", {"verbose": -1, "n_jobs": 1, **params}, dataset.numeric, dataset.categorical)
    model.fit(X, y if y_override is None else y_override)
    with edited(root / CANDIDATES) as cands:
        shutil.rmtree(cands)
        save_model(model, "lightgbm", dataset.features, cands / "lightgbm", task="binary", labels=list(dataset.labels))
        valid_scores = model.predict_proba(X_valid)[:, 1]
        pd.DataFrame({"lightgbm": valid_scores}).to_parquet(root / VALID_SCORES, index=False)
        summary = {"metric": "roc_auc", "direction": "higher_is_better", "task": "binary",
                   "families": {"lightgbm": {"cv_score": 0.5, "valid_score": 0.5}}}  # fmt: skip
        (cands / "summary.json").write_text(json.dumps(summary))
        yield


def evaluate_and_promote(root: Path) -> tuple[dict[str, Any], int]:
    """Run the real evaluate and promote stages; the gate record and promote's exit code."""
    assert main(["stage", "evaluate"]) == 0, "evaluate itself succeeds; the decision is in the record"
    record = json.loads((root / GATE_RECORD).read_text())
    return record, main(["stage", "promote"])


def assert_rejected(root: Path, gate: str) -> dict[str, Any]:
    before = registry_state(root)
    record, code = evaluate_and_promote(root)
    assert record["decision"] == "reject" and gate in record["failed_gates"], (gate, record["failed_gates"])
    failing = next(g for g in record["gates"] if g["name"] == gate)
    assert failing["status"] == "fail" and failing["reason"], failing
    assert code == 3, f"promote exits 3 on a rejected candidate, got {code}"
    assert registry_state(root) == before, "champion unchanged and no version registered"
    return failing


def test_worse_than_the_champion_is_rejected(project: Path) -> None:
    with gate_params(project, {}), candidate(project, {"n_estimators": 2, "num_leaves": 3}):
        gate = assert_rejected(project, "no_regression_vs_champion")
    assert gate["details"]["ci_high"] < 0, f"the whole interval says worse: {gate['details']}"


def test_a_model_leaning_on_sex_fails_invariance(project: Path) -> None:
    X, y, *_ = train_valid(project)
    rng = np.random.default_rng(0)
    leaning = np.where(rng.random(len(y)) < 0.6, (X["sex"] == "Male").to_numpy().astype(int), y)
    with gate_params(project, {}), candidate(project, {"n_estimators": 60}, y_override=leaning):
        gate = assert_rejected(project, "invariance")
    assert "sex" in gate["reason"], gate["reason"]


def test_a_model_breaking_a_directional_expectation_is_rejected(project: Path) -> None:
    X, y, *_ = train_valid(project)
    rng = np.random.default_rng(1)
    fewer_years_richer = (X["education-num"] < X["education-num"].median()).to_numpy().astype(int)
    reversed_labels = np.where(rng.random(len(y)) < 0.6, fewer_years_richer, y)  # P falls as education-num rises
    with gate_params(project, {}), candidate(project, {"n_estimators": 60}, y_override=reversed_labels):
        gate = assert_rejected(project, "directional")
    assert "education-num" in gate["reason"], gate["reason"]


def test_an_overconfident_uncalibrated_model_is_rejected_and_passes_once_calibrated(project: Path) -> None:
    overfit = {"n_estimators": 300, "learning_rate": 0.5, "num_leaves": 128, "min_child_samples": 2, "reg_lambda": 0.0}
    with gate_params(project, {"calibration": {"method": None, "max_ece": 0.05}}), candidate(project, overfit):
        gate = assert_rejected(project, "calibration")
    assert gate["value"] > 0.05, gate
    with gate_params(project, {"calibration": {"method": "isotonic", "max_ece": 0.05}}), candidate(project, overfit):
        record, _ = evaluate_and_promote(project)
    fixed = next(g for g in record["gates"] if g["name"] == "calibration")
    assert fixed["status"] == "pass" and fixed["value"] < gate["value"], f"isotonic on valid fixes it: {fixed}"
    assert record["calibration"] == "isotonic" and (project / EVALUATED_MODEL / "calibration.json").is_file()


def test_a_model_over_the_latency_budget_is_rejected(project: Path) -> None:
    with gate_params(project, {"latency": {"max_p95_ms": 0.001}}), candidate(project, {"n_estimators": 60}):
        gate = assert_rejected(project, "latency")
    assert gate["value"] > 0.001 and "p95" in gate["reason"], gate


def test_nan_metrics_are_rejected(project: Path) -> None:
    test_file = project / SPLITS["test"]
    with gate_params(project, {}), candidate(project, {"n_estimators": 60}), edited(test_file):
        test = pd.read_parquet(test_file)
        test[test["income"] == "<=50K"].to_parquet(test_file, index=False)  # one class: ROC AUC undefined
        assert_rejected(project, "metric_is_finite")
