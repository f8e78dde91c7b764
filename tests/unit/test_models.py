"""Given a family, the model takes raw columns, saves in safe formats and reloads to equal scores."""

from __future__ import annotations

import json
import re
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
from retrain.models import estimators
from retrain.models.estimators import (
    BOOSTER,
    MANIFEST,
    PIPELINE,
    SERVE_ONE_THREAD_ROWS,
    SKOPS_TRUSTED_TYPES,
    ModelIntegrityError,
    available_cores,
    build_model,
    file_sha256,
    load_predictor,
    monotone_params,
    pipeline_scores,
    save_model,
    scores_from_output,
    serve_output,
)
from retrain.models.families import FAMILIES
from retrain.models.tuning import fit_model, tune


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
    "random_forest": {"n_estimators": 8, "min_samples_leaf": 3, "random_state": 0},
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
    with pytest.raises(ModelIntegrityError, match=r"pipeline\.skops: sha256 .* differs"):
        load_predictor(tmp_path / "m")
    # even with the manifest's hash forged to match, skops refuses the type outside the trusted list
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["files"][PIPELINE] = file_sha256(path)
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="trusted"):
        load_predictor(tmp_path / "m")


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: text.replace("Tree=0", "Tree=0\nnum_leaves=-7", 1),  # edited
        lambda text: "\x00" * 64 + text,  # garbage bytes
    ],
    ids=["truncated", "edited", "garbage"],
)
def test_a_corrupt_booster_is_refused_naming_the_file_before_lightgbm_parses_it(tmp_path: Path, damage) -> None:
    X, y = frame()
    model = build_model("lightgbm", PARAMS["lightgbm"], NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, "lightgbm", [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    booster = tmp_path / "m" / BOOSTER
    booster.write_text(damage(booster.read_text()))
    expected = re.escape(str(booster)) + r": sha256 .* differs .* refusing to parse it"
    with pytest.raises(ModelIntegrityError, match=expected):
        load_predictor(tmp_path / "m")


def test_a_manifest_without_the_file_hash_or_unreadable_is_refused(tmp_path: Path) -> None:
    X, y = frame()
    model = build_model("lightgbm", PARAMS["lightgbm"], NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, "lightgbm", [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    path = tmp_path / "m" / MANIFEST
    manifest = json.loads(path.read_text())
    assert set(manifest["files"]) == {BOOSTER}, "the manifest records the booster's sha256"
    manifest["files"] = {}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match=r"no hash recorded for booster\.txt"):
        load_predictor(tmp_path / "m")
    path.write_text("{not json")
    with pytest.raises(ModelIntegrityError, match=re.escape(f"{path}: cannot read the model manifest")):
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
    trusted = FAMILIES["hgb"].trusted_types
    assert needed <= trusted, f"hgb needs only its listed types: {needed - trusted}"
    assert trusted - needed <= {"numpy.dtype"}, f"hgb's list holds nothing it does not need but numpy.dtype: {needed}"
    union = frozenset().union(*(f.trusted_types for f in FAMILIES.values()))
    assert union == SKOPS_TRUSTED_TYPES, "the exported list is the union of the families' lists"
    probe = X.head(3).copy()
    probe["c"] = "never-seen"
    assert np.isfinite(load_predictor(tmp_path / "m").predict_scores(probe)).all(), "unseen category scores"


@pytest.mark.parametrize("family", ["lightgbm", "hgb", "random_forest"])
def test_monotone_constraints_make_the_score_rise_with_the_feature(family: str) -> None:
    rng = np.random.default_rng(0)
    n = 800
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y"], size=n)})
    X["c"] = X["c"].astype("str")
    y = ((np.sin(3 * X["a"]) + X["b"] + rng.normal(scale=0.3, size=n)) > 0).astype(int).to_numpy()  # a: not monotone
    params = monotone_params(family, {"a": 1}, ["a", "b"], ["c"])
    assert params, f"{family} takes monotone constraints"
    fixed = {
        "lightgbm": {"n_estimators": 50, "verbose": -1},
        "hgb": {"max_iter": 50},
        "random_forest": {"n_estimators": 20, "min_samples_leaf": 5, "random_state": 0},
    }[family]
    model = build_model(family, {**fixed, **params}, ["a", "b"], ["c"]).fit(X, y)
    grid = pd.DataFrame({"a": np.linspace(-2, 2, 41), "b": 0.0, "c": "x"}).astype({"c": "str"})
    scores = model.predict_proba(grid)[:, 1]
    assert np.all(np.diff(scores) >= -1e-12), f"{family}: P rises with a (+1): {np.diff(scores).min()}"
    assert monotone_params("logreg", {"a": 1}, ["a", "b"], ["c"]) == {}, "linear families take no constraint"
    on_multiclass = monotone_params(family, {"a": 1}, ["a", "b"], ["c"], task="multiclass")
    assert bool(on_multiclass) == (family == "lightgbm"), f"scikit-learn trees refuse multiclass constraints: {family}"
    with pytest.raises(ConfigError, match=r"candidates\.monotone"):
        monotone_params(family, {"c": 1}, ["a", "b"], ["c"])


FOREST = FamilyConfig(
    fixed={"n_jobs": 2},
    space={
        "n_estimators": ParamRange(low=4, high=10, int=True),
        "max_depth": ParamRange(low=2, high=8, int=True),
        "min_samples_leaf": ParamRange(low=1, high=20, int=True, log=True),
        "max_features": ParamRange(low=0.3, high=1.0),
    },
)
"""A few small trees: the registry's default space (100-400 trees) is for real data."""


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_random_forest_tunes_saves_and_reloads_to_identical_scores(tmp_path: Path, task: str) -> None:
    X, _ = frame(300)
    y = frame()[1] if task == "binary" else task_target(X, task)
    labels = ["neg", "pos"] if task == "binary" else LABELS if task == "multiclass" else None
    metric = {"binary": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "r2"}[task]
    kwargs = dict(numeric=NUMERIC, categorical=CATEGORICAL, metric=metric, n_trials=2, n_folds=2, seed=0, task=task)
    result = tune("random_forest", FOREST, X, y, labels=labels, **kwargs)
    assert len(result.trials) == 2 and np.isfinite(result.cv_score), f"2 trials, a finite CV score: {result.trials}"
    assert result.threads == 2, "fixed.n_jobs asks for the threads per model (2 CPUs, one trial at a time)"
    model = fit_model("random_forest", result.best_params, X, y, numeric=NUMERIC, categorical=CATEGORICAL, task=task,
                      threads=2)  # fmt: skip
    assert model.named_steps["model"].n_jobs == 2, "training uses the planned threads"
    save_model(model, "random_forest", [*NUMERIC, *CATEGORICAL], tmp_path / "rf", task=task, labels=labels)
    assert model.named_steps["model"].n_jobs == 2, "saving does not change the caller's model"
    needed = set(sio.get_untrusted_types(file=tmp_path / "rf" / PIPELINE))
    assert needed <= FAMILIES["random_forest"].trusted_types, f"types outside the list: {needed}"
    predictor = load_predictor(tmp_path / "rf")
    assert predictor.pipeline.named_steps["model"].n_jobs == 1, "a served forest predicts on one thread"
    n_classes = len(labels) if task == "multiclass" else 2
    threaded = pipeline_scores(model, X, task, n_classes)
    assert np.allclose(predictor.predict_scores(X), threaded, rtol=1e-12, atol=1e-12), "same scores as when fitted"
    model.set_params(model__n_jobs=1)  # 2 threads add the trees' outputs in a varying order (last-bit differences)
    assert np.array_equal(predictor.predict_scores(X), pipeline_scores(model, X, task, n_classes)), "bit-identical"
    fitted = score(metric, y, predictor.predict_scores(X))
    assert fitted > 0.8, f"the forest learnt the {task} target on its training rows: {metric} {fitted:.3f}"
    probe = X.head(3).copy()
    probe["c"], probe["a"] = "never-seen", np.nan
    assert np.isfinite(predictor.predict_scores(probe)).all(), "unseen categories and missing numbers score"


def test_random_forest_file_does_not_depend_on_training_threads(tmp_path: Path) -> None:
    X, y = frame()
    for threads in (1, 2):
        model = fit_model("random_forest", PARAMS["random_forest"], X, y, numeric=NUMERIC, categorical=CATEGORICAL,
                          task="binary", threads=threads)  # fmt: skip
        save_model(model, "random_forest", [*NUMERIC, *CATEGORICAL], tmp_path / str(threads))
    blobs = [(tmp_path / str(t) / PIPELINE).read_bytes() for t in (1, 2)]
    assert blobs[0] == blobs[1], "the file holds the serving n_jobs (1), not the training threads"


@pytest.mark.parametrize(("family", "task"), [(f, t) for f in sorted(FAMILIES) for t in FAMILIES[f].tasks])
def test_every_family_builds_and_fits_from_its_default_space(family: str, task: str) -> None:
    record = FAMILIES[family]
    if record.meta:
        with pytest.raises(ValueError, match="assembled from tuned base models"):
            build_model(family, {}, NUMERIC, CATEGORICAL, task=task)
        return
    X, _ = frame(200)
    y = frame(200)[1] if task == "binary" else task_target(X, task)
    low = {k: ParamRange(**v) for k, v in record.space.items()}
    params = {k: (int(r.low) if r.int else r.low) if r.choices is None else r.choices[0] for k, r in low.items()}
    quiet = {"verbose": -1} if family == "lightgbm" else {}
    model = build_model(family, {**params, **quiet}, NUMERIC, CATEGORICAL, task=task).fit(X, y)
    assert np.isfinite(pipeline_scores(model, X, task, 3)).all(), f"{family} on {task} with its space's low ends"


@pytest.mark.parametrize("family", ["hgb", "random_forest", "logreg"])
def test_served_pipelines_follow_their_family_thread_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    from threadpoolctl import ThreadpoolController

    X, y = frame()
    model = build_model(family, PARAMS[family], NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, family, [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    predictor = load_predictor(tmp_path / "m")
    seen: list[dict[str, set[int]]] = []
    original = estimators.pipeline_scores

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        info = ThreadpoolController().info()
        seen.append({api: {p["num_threads"] for p in info if p["user_api"] == api} for api in ("openmp", "blas")})
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(estimators, "pipeline_scores", spy)
    big = pd.concat([X] * (SERVE_ONE_THREAD_ROWS // len(X) + 1), ignore_index=True)
    with threadpool_limits(limits=3):  # the caller's limits, set back after every prediction
        for rows in (X.head(1), big.head(SERVE_ONE_THREAD_ROWS), big):
            predictor.predict_scores(rows)
        after = {p["user_api"]: p["num_threads"] for p in ThreadpoolController().info()}
    batch = available_cores() if FAMILIES[family].threads.parallel_batches else 1
    one = {"openmp": {1}, "blas": {1}}
    assert seen == [one, one, {"openmp": {batch}, "blas": {1}}], f"requests on one thread, batches on {batch}: {seen}"
    assert after == {"openmp": 3, "blas": 3}, f"the caller's thread limits are restored: {after}"


@pytest.mark.parametrize("name", ["calibration.json", "confidence.json"])
def test_a_damaged_side_file_fails_naming_it(tmp_path: Path, name: str) -> None:
    from retrain.models.calibrator import fit_calibrator
    from retrain.models.estimators import save_calibration, save_confidence
    from retrain.serving.predict import read_confidence

    X, y = frame()
    model = build_model("lightgbm", PARAMS["lightgbm"], NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, "lightgbm", [*NUMERIC, *CATEGORICAL], tmp_path / "m")
    save_calibration(tmp_path / "m", fit_calibrator("sigmoid", model.predict_proba(X)[:, 1], y, "binary"))
    save_confidence(tmp_path / "m", 0.7, ["no", "yes"])
    (tmp_path / "m" / name).write_text('{"method": ')
    with pytest.raises(ModelIntegrityError, match=re.escape(str(tmp_path / "m" / name))):
        load_predictor(tmp_path / "m") if name == "calibration.json" else read_confidence(tmp_path / "m")
