"""MLflow logging of a candidate family's diagnostics, into its active `candidates/<family>` child run.

What is logged where is documented in docs/tracking.md; the computation lives in retrain/diagnostics.py.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import psutil
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from retrain import diagnostics as diag
from retrain.metrics import class_labels, get_metric
from retrain.models import pipeline_scores
from tasks.runtime import LOCK_FILE, StageContext

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
) -> dict[str, float]:
    """Everything about a family's train-fitted model into the active run; returns the scalar metrics it logged.

    `model` is the pipeline fitted on train only (its valid score is the family's); None (stacking) logs
    what its `valid_scores` allow: valid metrics, plots, the sample table, the lock file, system metrics.
    """
    started = time.perf_counter()
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_candidate_diagnostics needs the family's active MLflow run")
    dataset, seed = ctx.dataset, ctx.params.seed
    labels = class_labels(dataset)
    n_classes = len(labels) if labels else 0
    y_train, y_valid = np.asarray(y_train), np.asarray(y_valid)

    metrics: dict[str, float] = {"train_rows_per_s": len(X_train) / max(fit_seconds, 1e-9)}
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if model is not None:
        predict_started = time.perf_counter()
        valid_scores = pipeline_scores(model, X_valid, dataset.task, n_classes)
        metrics["predict_rows_per_s"] = len(X_valid) / max(time.perf_counter() - predict_started, 1e-9)
        splits["train"] = (y_train, pipeline_scores(model, X_train, dataset.task, n_classes))
    if valid_scores is None:
        raise ValueError("log_candidate_diagnostics needs a model or its valid scores")
    splits["valid"] = (y_valid, np.asarray(valid_scores))
    for split, (y, scores) in splits.items():
        metrics |= {f"{split}_{name}": value for name, value in diag.split_metrics(dataset.task, y, scores).items()}
    figures = (
        diag.regression_figures(y_valid, valid_scores)
        if dataset.task == "regression"
        else diag.classification_figures(y_valid, valid_scores, labels)
    )
    table = diag.sample_table(X_valid, y_valid, valid_scores, task=dataset.task, labels=labels, seed=seed)
    mlflow.log_table(data=table, artifact_file="diagnostics/valid_sample.json")
    if model is not None:
        _log_model_diagnostics(ctx, family, model, X_train, y_train, X_valid, y_valid, figures)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")

    lock = ctx.root / LOCK_FILE
    if lock.is_file():
        mlflow.log_artifact(str(lock), artifact_path="environment")
    else:
        logger.warning("tracking: %s not found; the locked environment is not logged", lock)

    metrics |= system_metrics(run.info.start_time)
    metrics["diagnostics_seconds"] = time.perf_counter() - started
    mlflow.log_metrics(metrics)
    logger.info("tracking: %s diagnostics logged in %.2f s", family, metrics["diagnostics_seconds"])
    return metrics


def _log_model_diagnostics(
    ctx: StageContext,
    family: str,
    model: Pipeline,
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    figures: dict[str, Any],
) -> None:
    """What needs the fitted pipeline: boosting loss curves, learning curve, feature importance (added to figures)."""
    dataset, metric, seed = ctx.dataset, ctx.params.evaluate.metric, ctx.params.seed
    labels = class_labels(dataset)
    n_classes = len(labels) if labels else 0
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    if diag.is_boosted(model):
        curve = diag.boosting_curve(
            model, {"train": (X_train, y_train), "valid": (X_valid, y_valid)}, dataset.task, n_classes
        )
        _log_curves(run_id, curve)
        mlflow.log_dict(curve, "diagnostics/loss_curve.json")
        mlflow.log_figure(
            diag.curve_figure(
                f"{family}: {curve['loss']} per boosting round",
                curve["steps"],
                {s: curve[s] for s in ("train", "valid")},
                "boosting round",
                curve["loss"],
            ),
            "plots/loss_curve.png",
        )

    learning = diag.learning_curve(
        model, X_train, y_train, X_valid, y_valid, task=dataset.task, n_classes=n_classes, metric=metric, seed=seed
    )
    mlflow.log_dict(learning, "diagnostics/learning_curve.json")
    mlflow.log_figure(
        diag.curve_figure(
            f"{family}: learning curve",
            learning["sizes"],
            {"train": learning["train"], "valid": learning["valid"]},
            "training rows",
            metric,
        ),
        "plots/learning_curve.png",
    )

    kind, importance = diag.feature_importance(
        model,
        dataset.features,
        X_valid,
        y_valid,
        lambda X: pipeline_scores(model, X, dataset.task, n_classes),
        metric=metric,
        greater_is_better=get_metric(metric).greater_is_better,
        seed=seed,
    )
    figures["feature_importance"] = diag.importance_figure(kind, importance)
    mlflow.log_dict({"kind": kind, "importance": importance}, "diagnostics/feature_importance.json")


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
