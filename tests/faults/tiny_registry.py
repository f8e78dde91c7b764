"""A real SQLite registry holding tiny Adult LightGBM versions, registered by promote's own code (the fault tests')."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from engine.context import StageContext, Tracking, ensure_experiment, tree_md5
from engine.stage import find_stage
from flows.dag import DAG
from retrain.catalog import SPLITS
from retrain.config import load_params
from retrain.metrics import encode_target
from retrain.models.estimators import build_model, save_model
from tasks.promote import log_and_register

REPO = Path(__file__).resolve().parents[2]
MODEL = "adult-income"


@dataclass
class TinyRegistry:
    """The registry's URI, the promote context, the training rows and each version's local and stored model."""

    uri: str
    ctx: StageContext
    X: pd.DataFrame
    model_dirs: dict[str, Path]
    stores: dict[str, Path]


def gate_record(ctx: StageContext, model_dir: str) -> dict:
    """The gate-record fields log_and_register reads (what evaluate writes for a promoted candidate)."""
    return {
        "candidate": {"family": "lightgbm", "model_dir": model_dir, "model_hash": tree_md5(ctx.path(model_dir))},
        "data_hash": "0" * 32,
        "git_commit": "test",
        "params_hash": "test",
        "metric": "roc_auc",
        "decision": "promote",
        "gates": [],
        "failed_gates": [],
    }


def register_tiny(root: Path, experiment_name: str, trees: dict[str, int], rows: int, seed: int) -> TinyRegistry:
    """Fit one tiny LightGBM per version (`trees` = version -> n_estimators), log, seal and register each in order."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = ensure_experiment(uri, experiment_name, root)
    params = load_params(REPO / "params.yaml")
    ctx = StageContext(find_stage(DAG, "promote"), params, root, Tracking(uri, experiment, None))
    dataset = ctx.dataset
    frame = pd.read_csv(REPO / "data/source/adult_train.csv.gz", na_values=["?"]).sample(rows, random_state=seed)
    frame = frame.reset_index(drop=True)
    valid = ctx.path(SPLITS["valid"])
    valid.parent.mkdir(parents=True)
    frame.to_parquet(valid)  # log_and_register takes the input example from the valid split
    X, y = frame[dataset.features], encode_target(frame[dataset.target], dataset)
    client = MlflowClient(uri)
    model_dirs, stores = {}, {}
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment, run_name="promote"):
            for version, n in trees.items():
                hyper = {"n_estimators": n, "num_leaves": 7, "verbose": -1, "n_jobs": 1}
                model = build_model("lightgbm", hyper, dataset.numeric, dataset.categorical).fit(X, y)
                rel = f"models/candidates/v{version}/lightgbm"
                save_model(model, "lightgbm", dataset.features, ctx.path(rel), labels=dataset.labels)
                got = log_and_register(ctx, gate_record(ctx, rel), client, {"retrain.gate_record": "none"})
                assert got == version, f"registered as version {got}, expected {version}"
                model_dirs[version] = ctx.path(rel)
                stores[version] = Path(client.get_model_version_download_uri(MODEL, version).removeprefix("file://"))
    finally:
        mlflow.set_tracking_uri(None)
    return TinyRegistry(uri, ctx, X, model_dirs, stores)
