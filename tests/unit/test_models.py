"""Given a family, the model takes raw columns, saves in safe formats and reloads to equal scores."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from threadpoolctl import threadpool_limits

from retrain.config import FamilyConfig, ParamRange
from retrain.errors import ConfigError, DataError
from retrain.metrics import score
from retrain.models import (
    BOOSTER,
    MANIFEST,
    PIPELINE,
    SKOPS_TRUSTED_TYPES,
    build_model,
    load_predictor,
    monotone_params,
    pipeline_scores,
    save_model,
    scores_from_output,
    serve_output,
)
from retrain.tuning import tune


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: HistGradientBoosting's threads stall when the shared cores are busy."""
    with threadpool_limits(limits=1):
        yield


NUMERIC, CATEGORICAL = ["a", "b"], ["c", "b_cat"]
"""Declared categorical order differs from alphabetical on purpose: the booster reads by position."""


def frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.integers(0, 100, size=n),
            "c": pd.Series(rng.choice(["x", "y", "z"], size=n), dtype="str"),
        }
    )
    X["b_cat"] = pd.Series(rng.choice(["p", "q"], size=n), dtype="str")
    X.loc[::17, "c"] = None
    y = ((X["a"] > 0) ^ (X["c"] == "x") ^ (X["b_cat"] == "p")).astype(int).to_numpy()
    return X, y


PARAMS = {
    "lightgbm": {"n_estimators": 20, "verbose": -1, "deterministic": True, "n_jobs": 1},
    "hgb": {"max_iter": 30, "random_state": 0},
    "logreg": {"C": 1.0},
    "ridge": {"alpha": 1.0},
}
LABELS = ["low", "mid", "high"]


def task_target(X: pd.DataFrame, task: str) -> np.ndarray:
    """A learnable target for each task from the same features."""
    if task == "regression":
        return (3 * X["a"] + (X["c"] == "x") * 2 + X["b"] / 50).to_numpy(dtype=float)
    return (np.digitize(X["a"], [-0.4, 0.4]) + (X["c"] == "x")).clip(0, 2).to_numpy()


@pytest.mark.parametrize("family", ["lightgbm", "hgb", "logreg"])
def test_save_load_round_trip(tmp_path: Path, family: str) -> None:
    X, y = frame()
    model = build_model(family, PARAMS[family], NUMERIC, CATEGORICAL).fit(X, y)
    files = save_model(model, family, [*NUMERIC, *CATEGORICAL], tmp_path / family)
    assert not any(f.suffix in {".pkl", ".pickle", ".joblib"} for f in files)
    predictor = load_predictor(tmp_path / family)
    assert np.allclose(predictor.predict_scores(X), model.predict_proba(X)[:, 1])


def test_unseen_category_does_not_fail(tmp_path: Path) -> None:
    X, y = frame()
    model = build_model("lightgbm", PARAMS["lightgbm"], NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, "lightgbm", [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    probe = X.head(3).copy()
    probe["c"] = "never-seen"
    assert np.isfinite(load_predictor(tmp_path / "m").predict_scores(probe)).all()


def test_same_data_gives_the_same_model(tmp_path: Path) -> None:
    X, y = frame()
    texts, scores = [], []
    for i in range(2):
        for family in ("lightgbm", "logreg"):
            model = build_model(family, PARAMS[family], NUMERIC, CATEGORICAL).fit(X, y)
            save_model(model, family, [*NUMERIC, *CATEGORICAL], tmp_path / f"{family}{i}")
            scores.append(load_predictor(tmp_path / f"{family}{i}").predict_scores(X))
        texts.append((tmp_path / f"lightgbm{i}" / BOOSTER).read_bytes())
    assert texts[0] == texts[1], "LightGBM model text must be byte-identical for identical fits"
    skops = [(tmp_path / f"logreg{i}" / PIPELINE).read_bytes() for i in range(2)]
    assert skops[0] == skops[1], "skops archives of identical fits must be byte-identical (stable names, no clock)"
    assert np.array_equal(scores[0], scores[2]) and np.array_equal(scores[1], scores[3]), "identical scores"


def test_skops_file_with_untrusted_type_is_refused(tmp_path: Path) -> None:
    X, y = frame()
    model = build_model("logreg", PARAMS["logreg"], NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, "logreg", [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    path = tmp_path / "m" / PIPELINE
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    schema = entries["schema.json"].decode().replace('"sklearn.linear_model._logistic"', '"os"', 1)
    schema = schema.replace('"LogisticRegression"', '"system"', 1)
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name, schema if name == "schema.json" else blob)
    with pytest.raises(ValueError, match="trusted"):
        load_predictor(tmp_path / "m")


def test_tuning_is_seeded_and_reports_trials() -> None:
    X, y = frame(400)
    cfg = FamilyConfig(fixed={"max_iter": 500}, space={"C": ParamRange(low=0.01, high=10, log=True)})
    a = tune(
        "logreg", cfg, X, y, numeric=NUMERIC, categorical=CATEGORICAL, metric="roc_auc", n_trials=3, n_folds=3, seed=1
    )
    b = tune(
        "logreg", cfg, X, y, numeric=NUMERIC, categorical=CATEGORICAL, metric="roc_auc", n_trials=3, n_folds=3, seed=1
    )
    assert a.best_params == b.best_params and a.cv_score == b.cv_score
    assert len(a.trials) == 3


def test_tuning_refuses_too_few_rows_for_folds() -> None:
    X, _ = frame(20)
    y = np.zeros(20, dtype=int)
    y[0] = 1
    with pytest.raises(DataError, match="cv_folds"):
        tune(
            "logreg",
            FamilyConfig(),
            X,
            y,
            numeric=NUMERIC,
            categorical=CATEGORICAL,
            metric="roc_auc",
            n_trials=1,
            n_folds=3,
            seed=0,
        )


@pytest.mark.parametrize(
    ("family", "task"),
    [
        ("lightgbm", "multiclass"),
        ("logreg", "multiclass"),
        ("hgb", "multiclass"),
        ("lightgbm", "regression"),
        ("ridge", "regression"),
        ("hgb", "regression"),
    ],
)
def test_multiclass_and_regression_round_trip(tmp_path: Path, family: str, task: str) -> None:
    X, _ = frame(400)
    y = task_target(X, task)
    model = build_model(family, PARAMS[family], NUMERIC, CATEGORICAL, task=task).fit(X, y)
    save_model(model, family, [*NUMERIC, *CATEGORICAL], tmp_path / family, task=task, labels=LABELS)
    predictor = load_predictor(tmp_path / family)
    scores = predictor.predict_scores(X)
    assert np.allclose(scores, pipeline_scores(model, X, task, 3)), "reloaded model scores like the fitted one"
    manifest = (tmp_path / family / MANIFEST).read_text()
    assert f'"task": "{task}"' in manifest, manifest
    if task == "multiclass":
        assert scores.shape == (len(X), 3) and np.allclose(scores.sum(axis=1), 1.0), "probabilities per class"
        assert score("roc_auc_ovr", y, scores) > 0.8, "the model learnt the classes (in label order)"
        served = serve_output(predictor, X)
        assert list(served.columns) == LABELS, "the pyfunc output has one column per label"
        shuffled = served[["high", "low", "mid"]]
        assert np.array_equal(scores_from_output(shuffled, task, LABELS), scores), "columns are read by name"
    else:
        assert scores.shape == (len(X),) and score("r2", y, scores) > 0.8, "predictions, not probabilities"
        assert np.array_equal(scores_from_output(serve_output(predictor, X), task, None), scores)


def test_multiclass_model_trained_without_a_class_scores_it_zero(tmp_path: Path) -> None:
    X, _ = frame(300)
    y = np.where(task_target(X, "multiclass") == 1, 0, 2)  # class 1 ("mid") never in training
    for family in ("lightgbm", "logreg"):
        model = build_model(family, PARAMS[family], NUMERIC, CATEGORICAL, task="multiclass").fit(X, y)
        save_model(model, family, [*NUMERIC, *CATEGORICAL], tmp_path / family, task="multiclass", labels=LABELS)
        scores = load_predictor(tmp_path / family).predict_scores(X)
        assert scores.shape == (len(X), 3), family
        assert np.all(scores[:, 1] == 0) and np.allclose(scores.sum(axis=1), 1.0), f"{family}: unseen class at 0"


def test_objective_that_contradicts_the_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"fixed.objective = 'binary' does not fit dataset.task 'regression'"):
        build_model("lightgbm", {"objective": "binary"}, NUMERIC, CATEGORICAL, task="regression")
    with pytest.raises(ConfigError, match=r"does not fit dataset.task 'binary'"):
        build_model("lightgbm", {"loss": "huber"}, NUMERIC, CATEGORICAL, task="binary")
    huber = build_model("lightgbm", {"objective": "huber"}, NUMERIC, CATEGORICAL, task="regression")
    assert huber.named_steps["model"].objective == "huber", "a regression objective that fits is kept"
    with pytest.raises(ConfigError, match="does not apply"):
        build_model("ridge", {}, NUMERIC, CATEGORICAL, task="binary")


def test_hgb_uses_native_categories_and_a_minimal_trusted_list(tmp_path: Path) -> None:
    X, y = frame()
    model = build_model("hgb", PARAMS["hgb"], NUMERIC, CATEGORICAL).fit(X, y)
    assert model.named_steps["model"].is_categorical_.tolist() == [False, False, True, True], "native categories"
    save_model(model, "hgb", [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    needed = set(sio.get_untrusted_types(file=tmp_path / "m" / PIPELINE))
    assert needed <= SKOPS_TRUSTED_TYPES, f"hgb needs only listed types: {needed - SKOPS_TRUSTED_TYPES}"
    assert len(SKOPS_TRUSTED_TYPES - needed) <= 1, f"the list holds nothing hgb does not need but numpy.dtype: {needed}"
    probe = X.head(3).copy()
    probe["c"] = "never-seen"
    assert np.isfinite(load_predictor(tmp_path / "m").predict_scores(probe)).all(), "unseen category scores"


@pytest.mark.parametrize("family", ["lightgbm", "hgb"])
def test_monotone_constraints_make_the_score_rise_with_the_feature(family: str) -> None:
    rng = np.random.default_rng(0)
    n = 800
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y"], size=n)})
    X["c"] = X["c"].astype("str")
    y = ((np.sin(3 * X["a"]) + X["b"] + rng.normal(scale=0.3, size=n)) > 0).astype(int).to_numpy()  # a: not monotone
    params = monotone_params(family, {"a": 1}, ["a", "b"], ["c"])
    assert params, f"{family} takes monotone constraints"
    fixed = {"n_estimators": 50, "verbose": -1} if family == "lightgbm" else {"max_iter": 50}
    model = build_model(family, {**fixed, **params}, ["a", "b"], ["c"]).fit(X, y)
    grid = pd.DataFrame({"a": np.linspace(-2, 2, 41), "b": 0.0, "c": "x"}).astype({"c": "str"})
    scores = model.predict_proba(grid)[:, 1]
    assert np.all(np.diff(scores) >= -1e-12), f"{family}: P rises with a (+1): {np.diff(scores).min()}"
    assert monotone_params("logreg", {"a": 1}, ["a", "b"], ["c"]) == {}, "linear families take no constraint"
    with pytest.raises(ConfigError, match=r"candidates\.monotone"):
        monotone_params(family, {"c": 1}, ["a", "b"], ["c"])
