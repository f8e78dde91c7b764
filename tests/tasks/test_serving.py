"""The serving artifact: fast path equals the model, decision output, no unpickling, serving gate, mlflow serve."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from threadpoolctl import threadpool_limits

from adapters.mlflow_packaging import log_pyfunc, no_compile, pyfunc_kwargs
from adapters.serving_check import ServingCheck, _compare, serving_gate
from retrain.config import ServingGate
from retrain.models.calibrator import fit_calibrator
from retrain.models.estimators import (
    MANIFEST,
    PIPELINE,
    SERVE_ONE_THREAD_ROWS,
    ModelIntegrityError,
    build_model,
    file_sha256,
    load_predictor,
    save_calibration,
    save_model,
    serve_output,
)
from retrain.serving.flavor import _load_pyfunc
from retrain.serving.predict import (
    ABSTAIN,
    CONFIDENCE_FILE,
    FastLightGBM,
    ServingModel,
    decisions,
)
from tests.servers import free_port, wait_healthy
from tests.unit.test_models import CATEGORICAL, NUMERIC, PARAMS, frame, task_target

ROOT = Path(__file__).resolve().parents[2]
FEATURES = [*NUMERIC, *CATEGORICAL]
BINARY_LABELS = ["no", "yes"]
THRESHOLD = 0.8


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: the cores are shared."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def lgbm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small binary LightGBM model directory with a stored confidence threshold."""
    X, y = frame()
    model = build_model("lightgbm", PARAMS["lightgbm"], NUMERIC, CATEGORICAL).fit(X, y)
    directory = tmp_path_factory.mktemp("lgbm") / "model"
    save_model(model, "lightgbm", FEATURES, directory, labels=BINARY_LABELS)
    (directory / CONFIDENCE_FILE).write_text(json.dumps({"threshold": THRESHOLD, "labels": BINARY_LABELS}))
    return directory


@pytest.fixture(scope="module")
def logreg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small multiclass skops (logistic regression) model directory, served without the fast path."""
    X, _ = frame()
    model = build_model("logreg", {"max_iter": 500}, NUMERIC, CATEGORICAL, task="multiclass")
    model.fit(X, task_target(X, "multiclass"))
    directory = tmp_path_factory.mktemp("logreg") / "model"
    save_model(model, "logreg", FEATURES, directory, task="multiclass", labels=["low", "mid", "high"])
    (directory / CONFIDENCE_FILE).write_text(json.dumps({"threshold": 0.6, "labels": ["low", "mid", "high"]}))
    return directory


def pyfunc(model_dir: Path) -> ServingModel:
    """The pyfunc's model loaded in process, as MLflow loads it (the loader module's `_load_pyfunc(data_path)`)."""
    return _load_pyfunc(str(model_dir))


def awkward_rows() -> pd.DataFrame:
    """Rows a client may send: unseen and missing categories, numbers as text, an extra column, object dtypes."""
    X, _ = frame(n=80, seed=3)
    X = X.astype(object)
    X.loc[0, "c"] = "never-seen"
    X.loc[1, "b_cat"] = None
    X.loc[2, "a"] = "1.5"
    X.loc[3, "a"] = "junk"
    X.loc[4, "b"] = np.nan
    X.loc[5, "c"] = np.nan
    X["extra"] = "ignored"
    return X[["extra", *reversed(FEATURES)]]


def test_fast_path_equals_the_model(lgbm_dir: Path) -> None:
    predictor = load_predictor(lgbm_dir)
    fast = FastLightGBM(predictor)
    for X in (frame(n=200, seed=1)[0], awkward_rows()):
        reference = predictor.predict_scores(X)
        assert np.array_equal(fast.predict_scores(X), reference), "batch: fast encoding changes the scores"
        singles = np.concatenate([fast.predict_scores(X.iloc[[i]]) for i in range(12)])
        assert np.array_equal(singles, reference[:12]), "single rows: fast encoding changes the scores"


def test_large_batches_use_every_core_with_identical_scores(lgbm_dir: Path) -> None:
    fast = FastLightGBM(load_predictor(lgbm_dir))
    fast.threads = 2
    X = frame(n=SERVE_ONE_THREAD_ROWS + 3, seed=7)[0]
    threaded = fast.predict_scores(X)
    fast.threads = 1
    assert np.array_equal(threaded, fast.predict_scores(X)), "2 LightGBM threads change the batch scores"
    assert np.array_equal(threaded, fast.predictor.predict_scores(X)), "batch scores differ from the predictor's"


def test_calibrated_and_stacked_lightgbm_serve_the_same_scores(lgbm_dir: Path, tmp_path: Path) -> None:
    X, y = frame(n=200, seed=5)
    calibrated = tmp_path / "calibrated"
    shutil.copytree(lgbm_dir, calibrated)
    raw = load_predictor(lgbm_dir).predict_scores(X)
    save_calibration(calibrated, fit_calibrator("isotonic", raw, y, "binary"))
    predictor = load_predictor(calibrated)
    served = pyfunc(calibrated)
    assert isinstance(served.predictor.inner, FastLightGBM), "the calibrated model's LightGBM uses the fast path"
    assert np.array_equal(served.predict(X), predictor.predict_scores(X)), "calibration is still applied"
    assert not np.array_equal(predictor.predict_scores(X), raw), "the fixture's calibrator changes the scores"
    singles = np.concatenate([served.predict(X.iloc[[i]]) for i in range(5)])
    assert np.array_equal(singles, predictor.predict_scores(X)[:5]), "single rows: identical calibrated scores"


def test_decision_output_binary(lgbm_dir: Path) -> None:
    model, X = pyfunc(lgbm_dir), frame(n=120, seed=2)[0]
    scores = model.predict(X)
    assert np.array_equal(scores, serve_output(load_predictor(lgbm_dir), X)), "default output is unchanged"
    out = model.predict(X, params={"output": "decision"})
    assert list(out.columns) == ["label", "confidence", "decision"]
    expected_label = np.where(scores >= 0.5, "yes", "no")
    assert (out["label"].to_numpy() == expected_label).all(), "label is the most probable class"
    assert np.allclose(out["confidence"], np.maximum(scores, 1 - scores)), "confidence is the top-class probability"
    abstain = out["confidence"] < THRESHOLD
    assert 0 < abstain.sum() < len(out), f"the fixture should have rows on both sides of {THRESHOLD}"
    assert (out.loc[abstain, "decision"] == ABSTAIN).all(), "under the threshold: abstain"
    assert (out.loc[~abstain, "decision"] == out.loc[~abstain, "label"]).all(), "at or over it: the label"
    with pytest.raises(ValueError, match=r"missing feature columns \['a'\]"):
        model.predict(X.drop(columns="a"))
    with pytest.raises(ValueError, match=r"params\.output must be one of"):
        model.predict(X, params={"output": "bogus"})


def test_decision_output_multiclass_and_missing_threshold(logreg_dir: Path, tmp_path: Path) -> None:
    X = frame(n=90, seed=4)[0]
    out = pyfunc(logreg_dir).predict(X, params={"output": "decision"})
    proba = load_predictor(logreg_dir).predict_scores(X)
    assert (out["label"].to_numpy() == np.array(["low", "mid", "high"])[proba.argmax(1)]).all(), "argmax label"
    assert np.allclose(out["confidence"], proba.max(1)), "top-class probability"
    no_threshold = tmp_path / "model"
    shutil.copytree(logreg_dir, no_threshold)
    (no_threshold / CONFIDENCE_FILE).unlink()
    with pytest.raises(ValueError, match=CONFIDENCE_FILE):
        pyfunc(no_threshold).predict(X, params={"output": "decision"})
    with pytest.raises(ValueError, match="regression"):
        decisions(np.zeros(3), "regression", [], 0.5)


class Boom:
    """A pickle payload: unpickling it creates a marker file (what an attacker's code would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_tampered_artifacts_are_never_unpickled(logreg_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "tampered"
    shutil.copytree(logreg_dir, bad)
    (bad / "model.pkl").write_bytes(pickle.dumps(Boom(marker)))
    # a skops archive holding a type outside the trusted list (this test's Boom class)
    (bad / PIPELINE).write_bytes(sio.dumps(Boom(marker)))
    with pytest.raises(ModelIntegrityError, match=r"pipeline\.skops: sha256 .* refusing to parse it"):
        load_predictor(bad)  # the bytes are not the saved ones: refused before skops reads them
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["files"][PIPELINE] = file_sha256(bad / PIPELINE)  # an attacker who also rewrites the manifest
    (bad / MANIFEST).write_text(json.dumps(manifest))
    untrusted = f"{Boom.__module__}.Boom"
    with pytest.raises(ValueError, match=untrusted.replace(".", r"\.")):
        load_predictor(bad)
    # the same through MLflow: the pyfunc is data plus an installed loader module, no pickle and no code of ours
    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(saved), **pyfunc_kwargs(ROOT, logreg_dir, frame(n=5)[0]))
    code = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.suffix in {".pkl", ".pickle", ".py"})
    assert code == [], f"a data-only pyfunc should hold no pickle and no code, found {code}"
    # pickles dropped next to intact artifacts are ignored: the model loads and predicts, nothing runs
    artifact = saved / "data" / logreg_dir.name
    (saved / "python_model.pkl").write_bytes(pickle.dumps(Boom(marker)))
    (artifact / "model.pkl").write_bytes(pickle.dumps(Boom(marker)))
    assert len(mlflow.pyfunc.load_model(str(saved)).predict(frame(n=4)[0])) == 4, "the intact model still serves"
    assert not marker.exists(), "a pickle dropped into the MLflow model directory was executed"
    shutil.rmtree(artifact)
    shutil.copytree(bad, artifact)
    with pytest.raises(Exception, match=untrusted.replace(".", r"\.")):
        mlflow.pyfunc.load_model(str(saved))
    assert not marker.exists(), "a pickle in the model directory was executed"
    live = tmp_path / "payload-works"
    pickle.loads(pickle.dumps(Boom(live)))
    assert live.exists(), "the payload is live: unpickling it does create the marker"


@pytest.mark.slow
def test_serving_gate_passes_in_a_fresh_process_and_names_failures(lgbm_dir: Path, tmp_path: Path) -> None:
    example = frame(n=5, seed=6)[0]
    expected = load_predictor(lgbm_dir).predict_scores(example)
    result = serving_gate(ROOT, lgbm_dir, example, expected, cfg=ServingGate())
    assert result.passed, result.reason
    assert result.details["max_abs_diff"] == 0.0, result.details
    broken = tmp_path / "broken"
    shutil.copytree(lgbm_dir, broken)
    (broken / "booster.txt").write_text("tree\nnot a booster\n")
    result = serving_gate(ROOT, broken, example, expected, cfg=ServingGate())
    assert not result.passed and "packaging" in result.reason, result.reason
    # loads in this process's packaging step, fails only when the pyfunc itself loads in the fresh process
    mismatched = tmp_path / "mismatched"
    shutil.copytree(lgbm_dir, mismatched)
    (mismatched / CONFIDENCE_FILE).write_text(json.dumps({"threshold": 0.5, "labels": ["a", "b"]}))
    result = serving_gate(ROOT, mismatched, example, expected, cfg=ServingGate())
    assert not result.passed and "fresh process failed" in result.reason, result.reason
    assert "differ from the model's labels" in result.reason, f"the child's error is named: {result.reason}"
    timeout = serving_gate(ROOT, lgbm_dir, example, expected, cfg=ServingGate(timeout_seconds=0.01))
    assert not timeout.passed and "timeout_seconds = 0.01" in timeout.reason, timeout.reason
    off = serving_gate(ROOT, lgbm_dir, example, expected, cfg=ServingGate(enabled=False))
    assert off.skipped and off.passed, "a disabled gate is skipped and blocks nothing"


@pytest.mark.slow
def test_serving_check_started_early_matches_the_gate_and_cancels_cleanly(
    lgbm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrain.serving.compiled import MODE_ENV, compile_mode

    example = frame(n=5, seed=6)[0]
    expected = load_predictor(lgbm_dir).predict_scores(example)
    monkeypatch.delenv(MODE_ENV, raising=False)  # as in a user's shell: the pyfunc loader's default is background
    moved = tmp_path / "moved"
    shutil.copytree(lgbm_dir, moved)
    check = ServingCheck(ROOT, moved, example, cfg=ServingGate()).start()
    assert compile_mode() == "background", "no_compile restores the caller's mode after packaging"
    shutil.rmtree(moved)  # the package was saved when the check started: a later move changes nothing
    early = check.result(expected)
    assert early.passed and early.details["max_abs_diff"] == 0.0, early.reason
    assert check._tmp is None, "the temp package is removed once the result is read"
    inline = serving_gate(ROOT, lgbm_dir, example, expected, cfg=ServingGate())
    assert (early.passed, early.value) == (inline.passed, inline.value), "started early or inline: one verdict"
    pending = ServingCheck(ROOT, lgbm_dir, example, cfg=ServingGate()).start()
    child, work = pending.process, Path(pending._tmp.name)
    pending.cancel()  # screening stopped at an earlier gate: the child must not outlive the decision
    assert child is not None and child.poll() is not None, "a cancelled check's child is stopped"
    assert not work.exists(), f"a cancelled check leaves no temp package behind: {work}"
    with no_compile():
        assert compile_mode() == "off"
    assert MODE_ENV not in os.environ, "an unset mode stays unset after packaging"


@pytest.mark.slow
def test_logging_the_pyfunc_starts_no_compile(lgbm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrain.serving import compiled
    from retrain.serving.compiled import MODE_ENV

    modes: list[str] = []
    original = compiled.CompiledBooster.start

    def recording(self: compiled.CompiledBooster, mode: str) -> compiled.CompiledBooster:
        modes.append(mode)  # a spy: the real start still runs (a cached object may finish it in milliseconds)
        return original(self, mode)

    monkeypatch.setattr(compiled.CompiledBooster, "start", recording)
    monkeypatch.delenv(MODE_ENV, raising=False)  # the pyfunc loader's default mode: background
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    example = frame(n=5, seed=6)[0]
    try:
        with mlflow.start_run():
            log_pyfunc(ROOT, lgbm_dir, example)
            assert "background" not in modes, f"promote's log_model started a compile (MLflow loads the model): {modes}"
            mlflow.pyfunc.log_model(name="plain", **pyfunc_kwargs(ROOT, lgbm_dir, example))
    finally:
        mlflow.set_tracking_uri(previous)
    assert "background" in modes, f"premise: a plain log_model loads the model here and starts a compile: {modes}"
    for thread in [t for t in threading.enumerate() if t.name == "compile-forest"]:
        thread.join(120)  # a tiny forest: seconds; leaves no child behind for the next test


def test_serving_gate_compares_outputs() -> None:
    want = np.array([0.1, 0.2, 0.3])
    assert _compare(want.copy(), want, {"seconds": 1.0}).passed, "equal outputs pass"
    off = _compare(want + np.array([0, 1e-6, 0]), want, {"seconds": 1.0})
    assert not off.passed and "row 1" in off.reason, off.reason
    shape = _compare(want[:2], want, {"seconds": 1.0})
    assert not shape.passed and "shape" in shape.reason, shape.reason


def post(url: str, payload: dict) -> dict:
    """POST JSON, return JSON (raise with the body on HTTP errors)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{url}: HTTP {exc.code}: {exc.read().decode()[:800]}") from exc


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(lgbm_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("serve", artifact_location=(tmp_path / "artifacts").as_uri())
        X = frame(n=6, seed=7)[0]
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(
                name="model", registered_model_name="serve-test", **pyfunc_kwargs(ROOT, lgbm_dir, X.head(3))
            )
        mlflow.MlflowClient().set_registered_model_alias("serve-test", "champion", info.registered_model_version)
        local = mlflow.pyfunc.load_model("models:/serve-test@champion")
    finally:
        mlflow.set_tracking_uri(None)
    port = free_port()
    # as docs/serving.md says to run it: the retrain env, pickle deserialization off (the loader needs none)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        "models:/serve-test@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/ping", server, log, timeout=90)
        split = json.loads(X.to_json(orient="split", index=False))
        scores = post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": split})["predictions"]
        assert np.allclose(scores, local.predict(X), rtol=1e-9), "served scores equal the local pyfunc's"
        decided = post(
            f"http://127.0.0.1:{port}/invocations", {"dataframe_split": split, "params": {"output": "decision"}}
        )["predictions"]
        expected = local.predict(X, params={"output": "decision"})
        assert [row["decision"] for row in decided] == expected["decision"].tolist(), decided
        assert np.allclose([row["confidence"] for row in decided], expected["confidence"]), decided
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
