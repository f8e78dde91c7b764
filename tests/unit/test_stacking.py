"""Given tuned base families, stacking fits a meta-learner on out-of-fold scores, saves each base in its
own safe format plus JSON coefficients, and reloads (also through the pyfunc) to the same scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from retrain.config import CandidatesConfig, DatasetConfig, FamilyConfig, ParamRange
from retrain.metrics import score
from retrain.models.estimators import MANIFEST, STACKING, StackingPredictor, fit_meta, load_predictor, stack_features
from retrain.serving.flavor import _load_pyfunc
from tasks.candidates import Design, fit_family, fit_stacking
from tests.unit.test_models import LABELS, frame, task_target

FIXED = {
    "lightgbm": {"n_estimators": 200, "verbose": -1, "deterministic": True, "n_jobs": 1, "min_child_samples": 5},
    "hgb": {"max_iter": 30, "n_jobs": 1},
    "logreg": {"max_iter": 500},
    "ridge": {},
}


def config(families: tuple[str, ...], task: str = "binary") -> CandidatesConfig:
    """Tiny budgets: 2 trials, 2 folds, LightGBM early-stopped inside folds."""
    linear = "ridge" if task == "regression" else "logreg"
    space = {"C": ParamRange(low=0.1, high=10, log=True)} if linear == "logreg" else {}
    return CandidatesConfig(
        families=families,
        cv_folds=2,
        n_trials=2,
        lightgbm=FamilyConfig(
            fixed=FIXED["lightgbm"],
            space={"num_leaves": ParamRange(low=4, high=16, int=True)},
            early_stopping_rounds=10,
        ),
        hgb=FamilyConfig(fixed=FIXED["hgb"], space={"learning_rate": ParamRange(low=0.05, high=0.3, log=True)}),
        **{linear: FamilyConfig(fixed=FIXED[linear], space=space)},
    )


def design(task: str = "binary", n: int = 400) -> Design:
    """Train/valid from the shared synthetic frame, with the task's target."""
    X, y = frame(n, seed=3)
    if task != "binary":
        y = task_target(X, task)
    cut = int(n * 0.75)
    labels = ["neg", "pos"] if task == "binary" else LABELS if task == "multiclass" else None
    dataset = DatasetConfig(
        name="synthetic",
        task=task,
        target="y",
        labels=labels,
        positive_label="pos" if task == "binary" else None,
        columns={
            "a": {"type": "float"},
            "b": {"type": "int"},
            "c": {"type": "category"},
            "b_cat": {"type": "category"},
        },
    )
    metric = {"binary": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "r2"}[task]
    valid = X.iloc[cut:].reset_index(drop=True)
    return Design(dataset, X.iloc[:cut], y[:cut], valid, y[cut:], None, False, labels, metric, 0)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_stacking_round_trip_and_pyfunc(tmp_path: Path, task: str) -> None:
    linear = "ridge" if task == "regression" else "logreg"
    cfg = config(("lightgbm", "hgb", linear, "stacking"), task)
    d = design(task)
    bases = {f: fit_family(f, d, cfg) for f in ("lightgbm", "hgb", linear)}
    stacked = fit_stacking(bases, d, cfg, tmp_path / "stacking")
    assert np.isfinite(stacked.result.cv_score), "stacking has a CV score from the meta-learner's own folds"
    predictor = load_predictor(tmp_path / "stacking")
    assert isinstance(predictor, StackingPredictor) and [b.task for b in predictor.bases] == [task] * 3
    reloaded = predictor.predict_scores(d.X_valid)
    assert np.allclose(reloaded.shape, stacked.valid_scores.shape), "same score shape as in training"
    manifest = json.loads((tmp_path / "stacking" / MANIFEST).read_text())
    assert manifest["format"] == "stacking" and manifest["bases"] == ["lightgbm", "hgb", linear], manifest
    assert (tmp_path / "stacking" / STACKING).exists() and (tmp_path / "stacking" / "lightgbm" / MANIFEST).exists()
    files = [p.name for p in (tmp_path / "stacking").rglob("*") if p.is_file()]
    assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files), files
    served = _load_pyfunc(str(tmp_path / "stacking")).predict(d.X_valid)  # what MLflow's loader module returns
    served = served.to_numpy() if isinstance(served, pd.DataFrame) else served
    assert np.allclose(served, reloaded), "the pyfunc serves the stacking model's scores"
    assert score(d.metric, d.y_valid, reloaded) > 0.6, "the stacked model (refit on train + valid) learnt the target"


def test_meta_learner_json_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, size=300), 0.01, 0.99)
    p2 = np.clip(0.2 * y + rng.uniform(0, 0.8, size=300), 0.01, 0.99)
    meta = fit_meta(["a", "b"], [p1, p2], y, "binary", {"C": 1.0})
    features = stack_features([p1, p2], "binary")
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(features, y).predict_proba(features)[:, 1]
    assert np.allclose(meta.predict(features, 2), reference), "the JSON coefficients reproduce sklearn's scores"
    assert meta.coef[0][0] > meta.coef[0][1] > 0, f"the more informative base gets more weight: {meta.coef}"


def test_stacking_needs_two_bases() -> None:
    with pytest.raises(ValueError, match="at least two other families"):
        CandidatesConfig(families=("lightgbm", "stacking"), cv_folds=2, n_trials=1)
