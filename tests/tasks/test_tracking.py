"""A family's child run gets every diagnostic: loss curves, split metrics, learning curve, table, speed, plots, lock."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow_tracking import log_candidate_diagnostics
from engine.context import LOCK_FILE, StageContext, Tracking
from engine.stage import find_stage
from flows.dag import DAG
from retrain.config import load_params
from retrain.metrics import encode_target
from retrain.models.estimators import build_model

REPO = Path(__file__).resolve().parents[2]
PLOTS = {"roc", "pr", "confusion_matrix", "calibration", "feature_importance", "learning_curve"}


@pytest.fixture(scope="module")
def adult() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.read_csv(REPO / "data/source/adult_train.csv.gz", na_values=["?"]).sample(2000, random_state=3)
    return frame.iloc[:1500].reset_index(drop=True), frame.iloc[1500:].reset_index(drop=True)


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.parametrize("family", ["lightgbm", "logreg"])
def test_child_run_holds_every_diagnostic(family: str, adult, tmp_path: Path) -> None:
    shutil.copy2(REPO / LOCK_FILE, tmp_path / LOCK_FILE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("diag", artifact_location=(tmp_path / "artifacts").as_uri())
    params = load_params(REPO / "params.yaml")
    ctx = StageContext(find_stage(DAG, "candidates"), params, tmp_path, Tracking(uri, experiment, None))
    dataset = ctx.dataset
    train, valid = adult
    X_train, y_train = train[dataset.features], encode_target(train[dataset.target], dataset)
    X_valid, y_valid = valid[dataset.features], encode_target(valid[dataset.target], dataset)
    hyper = {"n_estimators": 60, "num_leaves": 15, "verbose": -1, "n_jobs": 1} if family == "lightgbm" else {}
    model = build_model(family, hyper, dataset.numeric, dataset.categorical, task="binary").fit(X_train, y_train)

    with mlflow.start_run(experiment_id=experiment, run_name=f"candidates/{family}") as run:
        logged = log_candidate_diagnostics(ctx, family, model, X_train, y_train, X_valid, y_valid, fit_seconds=0.5)
    run_id = run.info.run_id
    metrics = client.get_run(run_id).data.metrics
    for split in ("train", "valid"):
        for name in ("roc_auc", "log_loss", "accuracy", "balanced_accuracy"):
            assert np.isfinite(metrics[f"{split}_{name}"]), f"{split}_{name} missing or not finite"
    assert metrics["train_rows_per_s"] == pytest.approx(1500 / 0.5), "training speed is train rows / fit seconds"
    assert metrics["predict_rows_per_s"] > 0 and metrics["system_process_rss_mb"] > 0, "speed and memory logged"
    assert {"system_cpu_count", "system_memory_percent", "system_load_1m"} <= set(metrics), "system metrics logged"
    assert logged["diagnostics_seconds"] < 20, f"diagnostics took {logged['diagnostics_seconds']:.1f} s"

    files = artifacts(client, run_id)
    assert {f"plots/{p}.png" for p in PLOTS} <= files, f"plots missing: {PLOTS - {Path(f).stem for f in files}}"
    assert {"diagnostics/learning_curve.json", "diagnostics/valid_sample.json"} <= files, files
    assert f"environment/{LOCK_FILE}" in files, "the locked environment is logged with the run"
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/diagnostics/valid_sample.json")
    assert len(table["data"]) == 50, "a 50-row sample table"
    assert {"label", "prediction", "probability"} <= set(table["columns"]), table["columns"]
    curve = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/diagnostics/learning_curve.json")
    assert curve["sizes"] == sorted(curve["sizes"]) and curve["sizes"][-1] == 1500, curve["sizes"]

    if family == "lightgbm":
        assert "plots/loss_curve.png" in files, files
        for split in ("train", "valid"):
            history = client.get_metric_history(run_id, f"curve_{split}_log_loss")
            steps = [m.step for m in sorted(history, key=lambda m: m.step)]
            assert len(steps) == 50 and steps[0] == 1 and steps[-1] == 60, f"{split}: one point per round, {steps}"
        history = sorted(client.get_metric_history(run_id, "curve_train_log_loss"), key=lambda m: m.step)
        losses = [m.value for m in history]
        assert all(b <= a + 1e-9 for a, b in itertools.pairwise(losses)), f"train loss never rises: {losses}"
    else:
        assert "plots/loss_curve.png" not in files, "no boosting rounds, no loss curve"


def test_a_family_without_a_single_pipeline_logs_what_its_valid_scores_allow(adult, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("diag", artifact_location=(tmp_path / "artifacts").as_uri())
    ctx = StageContext(
        find_stage(DAG, "candidates"), load_params(REPO / "params.yaml"), tmp_path, Tracking(uri, experiment, None)
    )
    dataset = ctx.dataset
    train, valid = adult
    y_valid = encode_target(valid[dataset.target], dataset)
    scores = np.clip(y_valid * 0.6 + 0.2, 0, 1)  # a stacked model's valid scores
    with mlflow.start_run(experiment_id=experiment, run_name="candidates/stacking") as run:
        log_candidate_diagnostics(
            ctx,
            "stacking",
            None,
            train[dataset.features],
            encode_target(train[dataset.target], dataset),
            valid[dataset.features],
            y_valid,
            fit_seconds=1.0,
            valid_scores=scores,
        )
    files = artifacts(client, run.info.run_id)
    assert {"plots/roc.png", "plots/calibration.png", "diagnostics/valid_sample.json"} <= files, files
    assert "plots/learning_curve.png" not in files and "plots/feature_importance.png" not in files, files
    assert client.get_run(run.info.run_id).data.metrics["valid_roc_auc"] == 1.0, "valid metrics from the given scores"
    assert f"environment/{LOCK_FILE}" not in files, "no lock file in this project root, none logged"
