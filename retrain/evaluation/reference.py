"""A reference serving cost measured on this machine, so `retrain init` can set the latency gate relative to it.

A LightGBM of a fixed size (REFERENCE_TREES trees) is fit on a seeded sample of the table, saved and loaded
exactly as a candidate is (retrain/models/estimators.py save_model, retrain/serving/predict.py ServingModel),
and timed with the latency gate's own clock (retrain/evaluation/latency.py single_row_latency_ms). A budget
written as a multiple of this number means "N times a 500-tree forest on this table and machine" rather than
a number of milliseconds measured on someone else's hardware.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig

REFERENCE_TREES = 500
"""Boosting rounds of the reference model (per class for multiclass)."""
REFERENCE_ROWS = 5_000
"""The reference model is fit on at most this many seeded rows: its cost is the trees, not the data."""
TIMED_CALLS = 200
"""Single-row predictions timed per round (the latency gate's default `rows`)."""
ROUNDS = 3
"""Timing rounds; the round with the median p50 is reported. The budget is set from p50, which measures the
machine rather than the moment: on a busy 2-core machine this model's p95 ranged 3.0-9.1 ms over three runs
while its p50 stayed at 0.45-0.48 ms."""


def reference_latency(
    frame: pd.DataFrame,
    dataset: DatasetConfig,
    *,
    seed: int = 42,
    trees: int = REFERENCE_TREES,
    max_rows: int = REFERENCE_ROWS,
    calls: int = TIMED_CALLS,
) -> dict[str, Any]:
    """Fit, save, load and time the reference LightGBM: p50/p95/p99 ms of single-row calls (median-p50 round), MB."""
    from retrain.evaluation.latency import directory_size_mb, single_row_latency_ms
    from retrain.metrics import class_labels, encode_target
    from retrain.models.estimators import build_model, save_model
    from retrain.serving.predict import ServingModel

    rows = frame[frame[dataset.target].notna()]
    if len(rows) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
        rows = rows.iloc[keep]
    features = dataset.features
    X, y = rows[features], encode_target(rows[dataset.target], dataset)
    params = {
        "n_estimators": trees,
        "num_leaves": 31,
        "learning_rate": 0.05,
        "min_child_samples": 5,
        "verbose": -1,
        "n_jobs": 1,
        "deterministic": True,
        "force_row_wise": True,
        "random_state": seed,
    }
    model = build_model("lightgbm", params, dataset.numeric, dataset.categorical, task=dataset.task)
    model.fit(X, y)
    with tempfile.TemporaryDirectory(prefix="retrain-init-") as tmp:
        directory = Path(tmp) / "model"
        save_model(model, "lightgbm", features, directory, task=dataset.task, labels=class_labels(dataset))
        served = ServingModel(directory)
        rounds = [single_row_latency_ms(served.predict, X.reset_index(drop=True), calls) for _ in range(ROUNDS)]
        stats = sorted(rounds, key=lambda r: r["p50_ms"])[len(rounds) // 2]
        size = directory_size_mb(directory)
    return {**stats, "size_mb": size, "trees": trees, "fit_rows": len(rows)}
