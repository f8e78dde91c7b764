"""Given permissive hyperparameters, every family can memorise ~50 rows of random targets: the model has
the capacity to learn, so a poor real-data score is not a plumbing bug (a sanity check, not quality)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from retrain.metrics import score
from retrain.models.estimators import build_model, fit_meta, pipeline_scores, stack_features


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: HistGradientBoosting's threads stall when the shared cores are busy."""
    with threadpool_limits(limits=1):
        yield


N = 50
NUMERIC, CATEGORICAL = ["a", "b"], ["c", "row_id"]
PERMISSIVE: dict[str, dict[str, Any]] = {
    "lightgbm": {
        "n_estimators": 300,
        "learning_rate": 0.3,
        "num_leaves": 64,
        "min_child_samples": 1,
        "min_data_in_bin": 1,
        "min_data_per_group": 1,
        "cat_smooth": 0.0,
        "cat_l2": 0.0,
        "reg_lambda": 0.0,
        "verbose": -1,
        "deterministic": True,
        "n_jobs": 1,
    },
    "hgb": {"max_iter": 300, "learning_rate": 0.3, "min_samples_leaf": 1, "max_leaf_nodes": None},
    "logreg": {"C": 1e4, "max_iter": 5000},
    "ridge": {"alpha": 1e-6},
}


def tiny(task: str) -> tuple[pd.DataFrame, np.ndarray]:
    """50 rows of noise features plus a per-row id category, and a random (unlearnable) target."""
    rng = np.random.default_rng(7)
    X = pd.DataFrame(
        {
            "a": rng.normal(size=N),
            "b": rng.normal(size=N),
            "c": pd.Series(rng.choice(["x", "y", "z"], size=N), dtype="str"),
            "row_id": pd.Series([f"r{i}" for i in range(N)], dtype="str"),
        }
    )
    y = rng.normal(size=N) if task == "regression" else rng.permutation(np.arange(N) % 2)
    return X, y


def training_score(family: str, task: str, X: pd.DataFrame, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit on the rows and score on the same rows (the point is memorisation)."""
    model = build_model(family, PERMISSIVE[family], NUMERIC, CATEGORICAL, task=task).fit(X, y)
    scores = pipeline_scores(model, X, task, 2)
    return scores, score("r2" if task == "regression" else "roc_auc", y, scores)


@pytest.mark.parametrize(
    ("family", "task"),
    [("lightgbm", "binary"), ("hgb", "binary"), ("logreg", "binary"), ("lightgbm", "regression"),
     ("hgb", "regression"), ("ridge", "regression")],
)  # fmt: skip
def test_family_memorises_a_tiny_sample(family: str, task: str) -> None:
    X, y = tiny(task)
    _, value = training_score(family, task, X, y)
    assert value > 0.98, f"{family} ({task}) fits random targets on {N} rows: training score {value:.3f}"


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_stacking_memorises_a_tiny_sample(task: str) -> None:
    X, y = tiny(task)
    families = ["lightgbm", "hgb", "ridge" if task == "regression" else "logreg"]
    base_scores = [training_score(f, task, X, y)[0] for f in families]
    meta = fit_meta(families, base_scores, y, task, {"C": 1e4} if task != "regression" else {"alpha": 1e-6})
    stacked = meta.predict(stack_features(base_scores, task), 2)
    value = score("r2" if task == "regression" else "roc_auc", y, stacked)
    assert value > 0.98, f"stacking ({task}) over memorising bases fits the sample: training score {value:.3f}"
