"""A tampered model artifact runs no code and is refused by every retrain path that loads a model.

Two versions are registered in a real SQLite registry by the real promote code (`tasks.promote.log_and_register`:
data-only pyfunc, manifest, manifest sha256 tag); version 1 was champion, version 2 is. Each case edits the
stored artifact of both versions in the file store the way an attacker with write access to it could (planted
code, a cloudpickle python_model.pkl whose unpickling writes a marker, edited booster text or model.json, a file
removed, added or replaced by a symlink, a rewritten manifest), then evaluate's champion load, rollback, `retrain
data restore` and `verified_version` must each refuse naming the version and the file, the marker must never
appear and the champion alias must not move.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adapters import lineage
from adapters import mlflow_audit as audit
from adapters import mlflow_registry as registry
from adapters.model_store import (
    MANIFEST_TAG,
    ArtifactIntegrityError,
    integrity,
    load_verified_predictor,
    verified_version,
)
from flows import env
from retrain.serving.flavor import load_serving_model
from retrain.serving.manifest import MANIFEST_NAME, manifest_bytes, sha256_bytes
from tests.faults.tiny_registry import register_tiny

REPO = Path(__file__).resolve().parents[2]
MODEL = "adult-income"
ALIAS = "champion"
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class Payload:
    """Unpickling it writes the marker file: proof that attacker code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


@dataclass
class Registry:
    """The registered project: root, tracking URI, the probe rows and each version's stored artifact dir."""

    root: Path
    uri: str
    X: pd.DataFrame
    labels: list[str]
    stores: dict[str, Path]
    model_dirs: dict[str, Path]

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def champion_version(self) -> str:
        return str(self.client().get_model_version_by_alias(MODEL, ALIAS).version)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Versions 1 and 2 of two tiny LightGBM models registered by promote's own code; champion 1 -> 2 in the audit."""
    root = tmp_path_factory.mktemp("tamper") / "proj"
    root.mkdir()
    tiny = register_tiny(root, "tamper", {"1": 8, "2": 12}, rows=1200, seed=5)
    uri, dataset, X = tiny.uri, tiny.ctx.dataset, tiny.X
    client = MlflowClient(uri)
    for before, after in ((None, "1"), ("1", "2")):
        client.set_registered_model_alias(MODEL, ALIAS, after)
        audit.append(uri, MODEL, ALIAS, before, after, gate_record=None, decision="promote", trigger="cli", run_id=None)
    stores = {v: lineage_store(client, v) for v in ("1", "2")}
    yield Registry(root, uri, X.head(40), [str(v) for v in dataset.labels or []], stores, tiny.model_dirs)


def lineage_store(client: MlflowClient, version: str) -> Path:
    """The version's artifact directory in the file store (what an attacker with store access edits)."""
    location = client.get_model_version_download_uri(MODEL, version)
    path = Path(location.removeprefix("file://"))
    assert path.is_dir(), f"version {version} artifacts are not a local directory: {location}"
    return path


# ---- tampering: each edits one stored artifact dir and returns the file the refusal must name ----


def _mlmodel(store: Path) -> dict:
    return yaml.safe_load((store / "MLmodel").read_text())


def _write_mlmodel(store: Path, conf: dict) -> None:
    (store / "MLmodel").write_text(yaml.safe_dump(conf))


def pickle_model(store: Path, marker: Path) -> str:
    """MLmodel pointed at a cloudpickle python_model.pkl whose unpickling writes the marker."""
    conf = _mlmodel(store)
    flavor = conf["flavors"]["python_function"]
    flavor.pop("data", None)
    flavor |= {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
    _write_mlmodel(store, conf)
    (store / "python_model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    return "MLmodel"


def code_dir(store: Path, marker: Path) -> str:
    """A code/ directory with a module shadowing retrain's loader, and MLmodel pointing code_paths at it."""
    conf = _mlmodel(store)
    conf["flavors"]["python_function"]["code"] = "code"
    _write_mlmodel(store, conf)
    target = store / "code" / "retrain" / "serving"
    target.mkdir(parents=True)
    (target / "flavor.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    return "MLmodel"


def loader_entry(store: Path, marker: Path) -> str:
    """A models-from-code entry file added and MLmodel switched to it (the old packaging's attack surface)."""
    conf = _mlmodel(store)
    flavor = conf["flavors"]["python_function"]
    flavor.pop("loader_module", None)
    flavor["model_code_path"] = "pyfunc_entry.py"
    _write_mlmodel(store, conf)
    (store / "pyfunc_entry.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    return "MLmodel"


def model_dir_of(store: Path) -> Path:
    [model_dir] = (store / "data").iterdir()
    return model_dir


def edit_booster(store: Path, marker: Path) -> str:
    """One leaf value of the LightGBM text changed (same size: only the hash can tell)."""
    booster = model_dir_of(store) / "booster.txt"
    text = booster.read_text()
    at = text.index("leaf_value=") + len("leaf_value=")
    digit = next(i for i in range(at, len(text)) if text[i].isdigit())
    booster.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :])
    return f"data/{model_dir_of(store).name}/booster.txt"


def edit_model_json(store: Path, marker: Path) -> str:
    path = model_dir_of(store) / "model.json"
    manifest = json.loads(path.read_text())
    manifest["labels"] = list(reversed(manifest.get("labels") or []))
    path.write_text(json.dumps(manifest))
    return f"data/{model_dir_of(store).name}/model.json"


def delete_file(store: Path, marker: Path) -> str:
    (store / "input_example.json").unlink()
    return "input_example.json"


def add_file(store: Path, marker: Path) -> str:
    (model_dir_of(store) / "extra.txt").write_text("unlisted")
    return f"data/{model_dir_of(store).name}/extra.txt"


def symlink(store: Path, marker: Path) -> str:
    """A file replaced by a symlink to an identical copy elsewhere (same bytes when followed)."""
    path = store / "requirements.txt"
    copy = marker.parent / "requirements-copy.txt"
    shutil.copy2(path, copy)
    path.unlink()
    path.symlink_to(copy)
    return "requirements.txt"


def rewrite_manifest(store: Path, marker: Path) -> str:
    """The booster edited and the manifest rewritten to match: the registry's manifest hash catches it."""
    edit_booster(store, marker)
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    rel = f"data/{model_dir_of(store).name}/booster.txt"
    data = (store / rel).read_bytes()
    manifest["files"][rel] = {"sha256": sha256_bytes(data), "size": len(data)}
    (store / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
    return MANIFEST_NAME


TAMPERS: dict[str, Callable[[Path, Path], str]] = {
    "pickle_python_model": pickle_model,
    "code_dir": code_dir,
    "loader_entry_file": loader_entry,
    "booster_text": edit_booster,
    "model_json": edit_model_json,
    "file_deleted": delete_file,
    "file_added": add_file,
    "symlink": symlink,
    "manifest_rewritten": rewrite_manifest,
}


@pytest.fixture
def tampered(registered: Registry, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Both versions' stored artifacts tampered one way (restored afterwards); yields (file to name, marker)."""
    marker = tmp_path / "MARKER"
    saved = {v: tmp_path / f"saved-{v}" for v in registered.stores}
    for version, store in registered.stores.items():
        shutil.copytree(store, saved[version], symlinks=True)
    try:
        files = {TAMPERS[request.param](store, marker) for store in registered.stores.values()}
        assert len(files) == 1, files
        yield files.pop(), marker
    finally:
        for version, store in registered.stores.items():
            shutil.rmtree(store)
            shutil.copytree(saved[version], store, symlinks=True)


def refused(excinfo: pytest.ExceptionInfo[ArtifactIntegrityError], version: str, file: str) -> None:
    """The refusal names the model, the version and the tampered file."""
    message = str(excinfo.value)
    assert f"{MODEL} version {version}:" in message, f"the error does not name version {version}: {message}"
    assert repr(file) in message, f"the error does not name the tampered file {file!r}: {message}"


@pytest.mark.parametrize("tampered", list(TAMPERS), indirect=True)
def test_every_retrain_path_refuses_a_tampered_version(
    registered: Registry, tampered: tuple[str, Path], tmp_path: Path
) -> None:
    file, marker = tampered
    uri = registered.uri
    with pytest.raises(ArtifactIntegrityError) as excinfo, verified_version(uri, MODEL, "1"):
        pass
    refused(excinfo, "1", file)

    champ = registry.champion(uri, MODEL, ALIAS)
    with pytest.raises(ArtifactIntegrityError) as excinfo:  # evaluate scores the champion this way
        registry.load_champion_scores(champ, registered.X, "binary", registered.labels, tracking_uri=uri)
    refused(excinfo, "2", file)

    with pytest.raises(ArtifactIntegrityError) as excinfo:
        registry.rollback(registered.root, uri, MODEL, ALIAS)
    refused(excinfo, "1", file)
    assert registered.champion_version() == "2", "a refused rollback moved the champion alias"
    entries = audit.entries(uri, MODEL)
    assert [e["to_version"] for e in entries] == ["1", "2"], f"a refused rollback wrote an audit entry: {entries}"

    ref = lineage.parse_model_ref(f"{MODEL}@{ALIAS}")
    with pytest.raises(ArtifactIntegrityError) as excinfo:
        lineage.restore(registered.root, uri, ref, tmp_path / "restored")
    refused(excinfo, "2", file)
    assert not (tmp_path / "restored").exists(), "restore wrote output for a tampered version"

    checked = integrity(uri, MODEL, ["1", "2"])  # `retrain history --verify`
    assert all(r.startswith("REFUSED") and repr(file) in r for r in checked.values()), checked
    assert not marker.exists(), "attacker code ran: the marker file exists"


def test_intact_versions_load_through_retrain_and_mlflow_alike(registered: Registry, monkeypatch) -> None:
    """The sealed artifact holds data only and serves the same scores verified, and through mlflow.pyfunc."""
    with verified_version(registered.uri, MODEL, ALIAS) as verified:
        assert verified.version == "2" and verified.model_dir.name == "lightgbm", verified
        files = sorted(p.relative_to(verified.path).as_posix() for p in verified.path.rglob("*") if p.is_file())
        scores = load_verified_predictor(verified).predict(registered.X)
    code = [f for f in files if f.endswith((".py", ".pkl", ".pickle", ".joblib", ".cloudpickle"))]
    assert not code, f"the registered artifact must hold data only, found {code}"
    assert MANIFEST_NAME in files and "MLmodel" in files, files
    local = load_serving_model(registered.model_dirs["2"]).predict(registered.X)
    assert np.array_equal(scores, local), "the verified champion scores differ from the model directory's"
    flavor = _mlmodel(registered.stores["2"])["flavors"]["python_function"]
    assert flavor["loader_module"] == "retrain.serving.flavor" and not flavor.get("code"), f"not data-only: {flavor}"
    monkeypatch.setenv(PICKLE_ENV, "true")
    env.harden()
    assert os.environ[PICKLE_ENV] == "false", "env.harden() must force pickle deserialization off"
    mlflow.set_tracking_uri(registered.uri)
    try:
        served = mlflow.pyfunc.load_model(f"models:/{MODEL}@{ALIAS}").predict(registered.X)
    finally:
        mlflow.set_tracking_uri(None)
    assert np.array_equal(np.asarray(served), local), "mlflow.pyfunc serves other scores than retrain's loader"
    assert integrity(registered.uri, MODEL, ["1", "2"]) == {"1": "ok", "2": "ok"}, "intact versions verify"
    champ = registry.champion(registered.uri, MODEL, ALIAS)
    champion_scores = registry.load_champion_scores(champ, registered.X, "binary", registered.labels, registered.uri)
    assert np.array_equal(champion_scores, local), "evaluate's champion scores differ from the served ones"


def test_a_cloudpickle_model_does_not_load_in_a_retrain_process(
    registered: Registry, tmp_path: Path, monkeypatch
) -> None:
    """With retrain's environment (pickle forced off over an inherited true), mlflow refuses python_model.pkl."""
    marker = tmp_path / "MARKER"
    local = tmp_path / "model"
    shutil.copytree(registered.stores["2"], local)
    pickle_model(local, marker)
    monkeypatch.setenv(PICKLE_ENV, "true")
    env.apply()
    with pytest.raises(mlflow.exceptions.MlflowException, match="Deserializing model using pickle is disallowed"):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists(), "the cloudpickle payload ran"


def test_a_version_without_manifest_tag_is_refused_with_how_to_reregister(registered: Registry) -> None:
    client = registered.client()
    source = client.get_model_version(MODEL, "2").source
    mlflow.set_tracking_uri(registered.uri)  # the logged model behind `source` is looked up in the active store
    try:
        old = client.create_model_version(MODEL, source, tags={"retrain.model_hash": "old"})
    finally:
        mlflow.set_tracking_uri(None)
    try:
        with (
            pytest.raises(ArtifactIntegrityError, match=f"no {MANIFEST_TAG} tag.*retrain run") as excinfo,
            verified_version(registered.uri, MODEL, str(old.version)),
        ):
            pass
        assert f"{MODEL} version {old.version}" in str(excinfo.value), excinfo.value
    finally:
        client.delete_model_version(MODEL, old.version)


def test_a_manifest_that_leaves_the_tree_is_refused(registered: Registry, tmp_path: Path) -> None:
    """Even a manifest whose hash the registry holds (registry write access) cannot list a path outside the tree."""
    client = registered.client()
    store = registered.stores["1"]
    saved = (store / MANIFEST_NAME).read_bytes()
    old_tag = client.get_model_version(MODEL, "1").tags[MANIFEST_TAG]
    manifest = json.loads(saved)
    manifest["files"]["../escape.txt"] = {"sha256": "0" * 64, "size": 0}
    crafted = manifest_bytes(manifest)
    (store / MANIFEST_NAME).write_bytes(crafted)
    client.set_model_version_tag(MODEL, "1", MANIFEST_TAG, sha256_bytes(crafted))
    try:
        with (
            pytest.raises(ArtifactIntegrityError, match=r"'\.\./escape\.txt'.*path traversal"),
            verified_version(registered.uri, MODEL, "1"),
        ):
            pass
    finally:
        (store / MANIFEST_NAME).write_bytes(saved)
        client.set_model_version_tag(MODEL, "1", MANIFEST_TAG, old_tag)


def test_a_tampered_champion_gate_record_is_refused_before_it_is_read(registered: Registry) -> None:
    """The champion's gate record (its latency/size bounds) is in the artifact store too: checked by its hash first."""
    from adapters.model_store import RECORD_SHA_TAG, log_json
    from tasks.evaluate import champion_record

    client = registered.client()
    experiment = client.get_experiment_by_name("tamper").experiment_id
    record = {"latency": {"p50_ms": 0.5, "p99_ms": 1.0, "size_mb": 0.1}, "decision": "promote"}
    mlflow.set_tracking_uri(registered.uri)
    try:
        with mlflow.start_run(experiment_id=experiment, run_name="promote") as run:
            sha = log_json(record, "gate_record.json")
    finally:
        mlflow.set_tracking_uri(None)
    before = client.get_model_version(MODEL, "2").tags
    client.set_model_version_tag(MODEL, "2", "retrain.gate_record", f"runs:/{run.info.run_id}/gate_record.json")
    client.set_model_version_tag(MODEL, "2", RECORD_SHA_TAG, sha)
    champ = registry.champion(registered.uri, MODEL, ALIAS)
    stored = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://")) / "gate_record.json"
    original = stored.read_bytes()
    try:
        assert champion_record(registered.uri, champ) == record, "an intact gate record reads back as logged"
        loosened = json.loads(original)
        loosened["latency"]["p50_ms"] = 1e9  # would make any candidate pass the relative latency bound
        stored.write_text(json.dumps(loosened))
        with pytest.raises(ArtifactIntegrityError, match=r"gate_record\.json.*differs from") as excinfo:
            champion_record(registered.uri, champ)
        assert f"{MODEL} version 2:" in str(excinfo.value), excinfo.value
        client.delete_model_version_tag(MODEL, "2", RECORD_SHA_TAG)
        with pytest.raises(ArtifactIntegrityError, match=f"no {RECORD_SHA_TAG}"):
            champion_record(registered.uri, champ)
    finally:
        stored.write_bytes(original)
        client.set_model_version_tag(MODEL, "2", "retrain.gate_record", before.get("retrain.gate_record", "none"))
        if RECORD_SHA_TAG in client.get_model_version(MODEL, "2").tags:
            client.delete_model_version_tag(MODEL, "2", RECORD_SHA_TAG)
