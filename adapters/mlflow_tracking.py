"""MLflow logging of a candidate family's diagnostics, into its active `candidates/<family>` child run.

What is logged where is documented in docs/tracking.md; the computation lives in retrain/evaluation/diagnostics.py.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import psutil
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from retrain.catalog import LOCK_FILE

if TYPE_CHECKING:
    from engine.context import StageContext
from retrain.evaluation import diagnostics as diag
from retrain.metrics import class_labels

logger = logging.getLogger(__name__)

BATCH = 1000
"""Metrics per MlflowClient.log_batch call (MLflow's limit)."""


def log_candidate_diagnostics(
    ctx: StageContext,
    family: str,
    model: Pipeline | None,
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    *,
    fit_seconds: float,
    valid_scores: np.ndarray | None = None,
    documents: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Everything about a family's train-fitted model into the active run; returns the scalar metrics it logged.

    `model` is the pipeline fitted on train only (its valid score is the family's); None (stacking) logs
    what its `valid_scores` allow: valid metrics, plots, the sample table, the lock file, system metrics.
    `documents`, when given, receives the JSON documents (the candidates stage keeps the learning curve).
    """
    started = time.perf_counter()
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_candidate_diagnostics needs the family's active MLflow run")
    dataset = ctx.dataset
    found = diag.candidate_diagnostics(
        family,
        model,
        X_train,
        y_train,
        X_valid,
        y_valid,
        task=dataset.task,
        features=dataset.features,
        labels=class_labels(dataset),
        metric=ctx.params.evaluate.metric,
        seed=ctx.params.seed,
        valid_scores=valid_scores,
    )
    mlflow.log_table(data=found.table, artifact_file="diagnostics/valid_sample.json")
    if "loss_curve" in found.documents:
        _log_curves(run.info.run_id, found.documents["loss_curve"])
    for name, document in found.documents.items():
        mlflow.log_dict(document, f"diagnostics/{name}.json")
    if documents is not None:
        documents.update(found.documents)
    for name, figure in found.figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")

    lock = ctx.root / LOCK_FILE
    if lock.is_file():
        mlflow.log_artifact(str(lock), artifact_path="environment")
    else:
        logger.warning("tracking: %s not found; the locked environment is not logged", lock)

    metrics = {"train_rows_per_s": len(X_train) / max(fit_seconds, 1e-9), **found.metrics}
    metrics |= system_metrics(run.info.start_time)
    metrics["diagnostics_seconds"] = time.perf_counter() - started
    mlflow.log_metrics(metrics)
    logger.info("tracking: %s diagnostics logged in %.2f s", family, metrics["diagnostics_seconds"])
    return metrics


def _log_curves(run_id: str, curve: dict[str, Any]) -> None:
    """The per-round losses as metric histories (`curve_<split>_<loss>`, step = round), in batches."""
    now = int(time.time() * 1000)
    points = [
        Metric(f"curve_{split}_{curve['loss']}", float(value), now, int(step))
        for split in ("train", "valid")
        for step, value in zip(curve["steps"], curve[split], strict=True)
        if np.isfinite(value)
    ]
    client = MlflowClient()
    for start in range(0, len(points), BATCH):
        client.log_batch(run_id, metrics=points[start : start + BATCH])


def system_metrics(run_start_ms: int) -> dict[str, float]:
    """A psutil sample at the end of the family's run: process CPU time and memory, peak RSS, load, host memory."""
    process = psutil.Process(os.getpid())
    cpu = process.cpu_times()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return {
        "system_process_cpu_seconds_total": float(cpu.user + cpu.system),
        "system_load_1m": float(psutil.getloadavg()[0]),
        "system_process_rss_mb": process.memory_info().rss / 2**20,
        "system_process_peak_rss_mb": float(peak_mb),
        "system_memory_percent": float(psutil.virtual_memory().percent),
        "system_cpu_count": float(psutil.cpu_count() or 0),
        "system_run_wall_seconds": max(time.time() - run_start_ms / 1000.0, 0.0),
    }
