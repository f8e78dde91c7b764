"""The compiled LightGBM forest (retrain/serving/compiled.py): equal to the booster, cached by hash, never trusted.

Real lleaves compiles in a real child process, on tiny 20-tree models (a few seconds each).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from retrain.errors import ConfigError
from retrain.models.estimators import SERVE_ONE_THREAD_ROWS, build_model, load_predictor, save_model
from retrain.serving.compiled import MODE_ENV, CompiledBooster, cache_dir, cache_key, compile_mode
from retrain.serving.http import CONTENT_JSON, ScoringApp
from retrain.serving.predict import ServingModel
from tests.unit.test_models import CATEGORICAL, NUMERIC, PARAMS, frame, task_target

FEATURES = [*NUMERIC, *CATEGORICAL]
LABELS = {"binary": ["no", "yes"], "multiclass": ["low", "mid", "high"], "regression": None}
TOLERANCE = 1e-12


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache directory of this module's own (XDG_CACHE_HOME), removed with the temp dir."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 20-tree LightGBM model directory per task (categorical features included)."""
    X, _ = frame()
    out = {}
    for task, labels in LABELS.items():
        y = task_target(X, task) if task != "binary" else (X["a"] + (X["c"] == "x") > 0.3).astype(int).to_numpy()
        model = build_model("lightgbm", PARAMS["lightgbm"], NUMERIC, CATEGORICAL, task=task).fit(X, y)
        directory = tmp_path_factory.mktemp(task) / "model"
        save_model(model, "lightgbm", FEATURES, directory, task=task, labels=labels)
        out[task] = directory
    return out


def awkward_rows(n: int = 60) -> pd.DataFrame:
    """Rows with missing and unseen categories, numbers as text and junk, NaN, an extra column."""
    X = frame(n=n, seed=4)[0].astype(object)
    X.loc[0, "c"], X.loc[1, "b_cat"], X.loc[2, "a"], X.loc[3, "a"] = "never-seen", None, "1.5", "junk"
    X.loc[4, "b"], X.loc[5, "c"] = np.nan, np.nan
    X["extra"] = "ignored"
    return X[["extra", *reversed(FEATURES)]]


def as_array(output: np.ndarray | pd.DataFrame) -> np.ndarray:
    """Served output as floats."""
    return output.to_numpy(dtype=float) if isinstance(output, pd.DataFrame) else np.asarray(output, dtype=float)


@pytest.mark.parametrize("task", list(LABELS))
def test_compiled_forest_equals_the_booster(models: dict[str, Path], task: str) -> None:
    served = ServingModel(models[task], compiled="wait")
    [compiled] = served.compiled
    assert compiled.forest is not None, f"{task}: the compiled forest fell back: {compiled.reason}"
    reference = load_predictor(models[task])
    for X in (awkward_rows(), frame(n=SERVE_ONE_THREAD_ROWS + 7, seed=9)[0]):
        want = reference.predict_scores(X)
        for threads in (1, 2):
            served.fast.threads = threads
            got = as_array(served.predict(X))
            assert np.abs(got - want).max() <= TOLERANCE, f"{task}, {threads} threads: batch differs from the booster"
    X = awkward_rows(8)
    want = reference.predict_scores(X)
    singles = np.concatenate([as_array(served.predict(X.iloc[[i]])) for i in range(8)])
    assert np.abs(singles - want).max() <= TOLERANCE, f"{task}: single rows differ from the booster"
    rows = X.astype(object).where(X.notna(), None).to_numpy().tolist()
    listed = as_array(served.predict_rows(list(X.columns), rows))
    assert np.abs(listed - want).max() <= TOLERANCE, f"{task}: predict_rows (serve-model's path) differs"


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_batch_encoded_chunk_by_chunk_on_the_threads_is_bit_identical(models: dict[str, Path], task: str) -> None:
    served = ServingModel(models[task], compiled="wait")
    forest = served.compiled[0].forest
    assert forest is not None, served.compiled[0].reason
    fast = served.fast
    X = frame(n=SERVE_ONE_THREAD_ROWS + 333, seed=11)[0]
    encoded = fast.encode(X)
    whole = forest.predict(encoded, 1)
    for threads in (2, 3):
        seen: list[tuple[int, int]] = []

        def encode(start: int, end: int, seen: list[tuple[int, int]] = seen) -> np.ndarray:
            seen.append((start, end))
            return fast.encode(X.iloc[start:end])

        got = forest.predict_encoding(encode, len(X), threads)
        assert np.array_equal(got, whole), f"{task}, {threads} threads: chunked encoding changed the scores"
        ranges = sorted(seen)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(X), f"the chunks cover every row: {ranges}"
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), f"no gap or overlap: {ranges}"
        assert len(ranges) == threads, f"one chunk per thread: {ranges}"
        assert np.array_equal(forest.predict(encoded, threads), whole), f"{threads} threads: walk-only differs"
        fast.threads = threads
        assert np.array_equal(fast.predict_scores(X), fast.scores_of(encoded)), (
            f"{task}, {threads} threads: the served batch differs from encode-then-score"
        )
    with pytest.raises(ValueError, match=r"returned \d+ rows"):
        forest.predict_encoding(lambda start, end: encoded[start : max(start, end - 1)], len(X), 2)


def test_cache_is_reused_and_a_tampered_object_recompiled(
    models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    first = ServingModel(models["binary"], compiled="wait").compiled[0]
    assert first.forest is not None, first.reason
    again = ServingModel(models["binary"], compiled="wait").compiled[0]
    assert again.forest is not None and "compile" not in again.seconds, "the second load comes from the cache"
    key = cache_key(load_predictor(models["binary"]).booster.model_to_string().encode())
    obj = cache_dir() / f"{key}.o"
    assert obj.is_file() and oct(cache_dir().stat().st_mode & 0o777) == "0o700", "a private cache holds the object"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="retrain.serving.compiled"):
        rebuilt = ServingModel(models["binary"], compiled="wait").compiled[0]
    assert "differs from its sidecar" in caplog.text, f"a tampered object is reported: {caplog.text}"
    assert rebuilt.forest is not None and "compile" in rebuilt.seconds, "a tampered object is recompiled, not loaded"
    encoded = ServingModel(models["binary"]).fast.encode(awkward_rows())
    diff = np.abs(rebuilt.forest.predict(encoded) - load_predictor(models["binary"]).booster.predict(encoded)).max()
    assert diff <= TOLERANCE, f"the recompiled forest differs from the booster by {diff}"


def test_background_mode_serves_the_booster_then_swaps(models: dict[str, Path]) -> None:
    served = ServingModel(models["regression"], compiled="background")
    X = awkward_rows()
    want = load_predictor(models["regression"]).predict_scores(X)
    assert np.abs(as_array(served.predict(X)) - want).max() <= TOLERANCE, "served while the forest builds"
    forest = served.compiled[0].wait(timeout=300)
    assert forest is not None, served.compiled[0].reason
    assert np.abs(as_array(served.predict(X)) - want).max() <= TOLERANCE, "served by the compiled forest"


def test_unsafe_cache_or_unsupported_model_falls_back_with_a_reason(
    models: dict[str, Path], _private_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = cache_dir()
    directory.chmod(0o777)
    try:
        with caplog.at_level(logging.WARNING, logger="retrain.serving.compiled"):
            served = ServingModel(models["binary"], compiled="wait")
    finally:
        directory.chmod(0o700)
    [compiled] = served.compiled
    assert compiled.forest is None and "group/other-writable" in (compiled.reason or ""), compiled.reason
    assert caplog.text.count("serving with the LightGBM booster") == 1, "one log line names why"
    X = awkward_rows()
    assert np.array_equal(served.predict(X), load_predictor(models["binary"]).predict_scores(X)), "booster serves"

    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 3))
    linear = lgb.train(
        {"objective": "regression", "linear_tree": True, "verbose": -1, "num_threads": 1},
        lgb.Dataset(data, data[:, 0] * 2 + data[:, 1]),
        num_boost_round=3,
    )
    refused = CompiledBooster(linear, []).start("wait")
    assert refused.forest is None and "linear trees" in (refused.reason or ""), refused.reason


def test_mode_comes_from_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_ENV, "wait")
    assert compile_mode(None) == "wait" and compile_mode("off") == "off", "the flag wins over the environment"
    monkeypatch.delenv(MODE_ENV)
    assert compile_mode(None) == "background", "background is the default"
    monkeypatch.setenv(MODE_ENV, "fast")
    with pytest.raises(ConfigError, match=f"{MODE_ENV} 'fast' is not a compiled-serving mode"):
        compile_mode(None)


def test_serve_model_json_rows_skip_pandas_and_match(models: dict[str, Path]) -> None:
    served = ServingModel(models["multiclass"], compiled="wait")
    app = ScoringApp(served)
    X = awkward_rows(3)
    rows = X.astype(object).where(X.notna(), None).to_numpy().tolist()
    body = json.dumps({"dataframe_split": {"columns": list(X.columns), "data": rows}}).encode()
    reply = app.handle("POST", "/invocations", body, CONTENT_JSON)
    assert reply.status == 200, reply.body
    got = np.array([[r[label] for label in LABELS["multiclass"]] for r in json.loads(reply.body)["predictions"]])
    want = load_predictor(models["multiclass"]).predict_scores(X)
    assert np.abs(got - want).max() <= TOLERANCE, "HTTP rows through predict_rows and the compiled forest"
