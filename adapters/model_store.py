"""Verified model versions: a registered version's bytes are checked against the registry before anything is used.

At registration `seal` downloads what MLflow stored for the logged model, writes `retrain_manifest.json`
(every file's sha256 and size, `retrain.serving.manifest`) next to it, and returns the manifest's sha256, which
`promote` records on the version as tag `retrain.manifest_sha256`. `verified_version` downloads a version
into a fresh private temp dir and checks, in this order and before parsing anything else: no symlink in the
store, the manifest's bytes against the tag, then every file against the manifest (no file added, removed or
edited). Only then does it yield; `load_verified_predictor` loads the model with retrain's installed code
(never `mlflow.pyfunc.load_model`, never the artifact's MLmodel or any code shipped in it).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME
from mlflow.tracking import MlflowClient

from retrain.errors import ConfigError, RetrainInputError
from retrain.serving.manifest import (
    MANIFEST_NAME,
    TreeMismatchError,
    build_manifest,
    check_tree,
    manifest_bytes,
    parse_manifest,
    sha256_bytes,
    walk,
)

if TYPE_CHECKING:
    from retrain.serving.predict import ServingModel

logger = logging.getLogger(__name__)

MANIFEST_TAG = "retrain.manifest_sha256"
"""Tag on every registered version: sha256 of its artifact's retrain_manifest.json."""
TEMP_PREFIX = "retrain-verified-"
MLFLOW_WRITTEN = (REGISTERED_MODEL_META_FILE_NAME,)
"""Files MLflow itself writes into a local store's artifact dir (`mlflow.pyfunc.load_model("models:/...")` adds
`registered_model_meta`): not in the manifest, deleted from the verified copy unread."""
REREGISTER_HINT = (
    "Re-register it as a sealed version: `retrain run --set promote.model_name=NEW_NAME` registers the retrained "
    "model under a fresh name, or remove the old alias (MlflowClient().delete_registered_model_alias) so the next "
    "`retrain run` promotes a sealed version"
)
"""How to get out of an unsealed champion (one registered before manifests existed)."""


class ArtifactIntegrityError(RetrainInputError):
    """A registered version's artifact does not match the registry: nothing was loaded or changed (exit 2)."""

    def __init__(self, model_name: str, version: str, file: str, problem: str) -> None:
        super().__init__(
            f"model {model_name} version {version}: artifact file {problem}; refusing to use this version "
            "(nothing from it was loaded or run)"
        )
        self.model_name, self.version, self.file = model_name, version, file


@dataclass(frozen=True)
class VerifiedVersion:
    """A registered version whose downloaded artifact matched the registry's manifest hash, file by file."""

    model_name: str
    version: str
    path: Path
    """The downloaded artifact root (private temp dir, removed when the context exits)."""
    model_dir: Path
    """The retrain model directory inside it (what `retrain.models.estimators.load_predictor` reads)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """The version's registry tags (lineage, model hash, gate record URI)."""


def resolve(client: MlflowClient, model_name: str, ref: str) -> ModelVersion:
    """The version `ref` names: a version number or an alias; ConfigError (exit 2) when there is none."""
    ref = str(ref)
    try:
        if re.fullmatch(r"\d+", ref):
            return client.get_model_version(model_name, ref)
        return client.get_model_version_by_alias(model_name, ref)
    except MlflowException as exc:
        what = f"version {ref}" if ref.isdigit() else f"alias {ref!r}"
        raise ConfigError(f"model {model_name!r} has no {what} in the registry") from exc


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local artifact location (plain path or file://), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def _download(location: str, dest: Path, tracking_uri: str) -> Path:
    """Copy every stored file of an artifact location into dest (a plain copy: nothing is read or added)."""
    source = local_path(location)
    if source is not None:
        walk(source)  # a symlink in the store is refused before anything is copied through it
    dest.mkdir(mode=0o700)
    downloaded = Path(download_artifacts(artifact_uri=location, dst_path=str(dest), tracking_uri=tracking_uri))
    return downloaded if downloaded.is_dir() else dest


@contextmanager
def private_dir() -> Iterator[Path]:
    """A fresh temp dir only this user can read (mkdtemp: mode 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def seal(client: MlflowClient, tracking_uri: str, model_id: str, model_dir: str) -> str:
    """Store retrain_manifest.json of every file the logged model holds; its sha256 (the registry tag).

    The hashed files are the stored ones: they are downloaded back from the artifact store, not taken from
    the local copy MLflow uploaded.
    """
    location = client.get_logged_model(model_id).artifact_location
    with private_dir() as work:
        try:
            stored = _download(location, work / "stored", tracking_uri)
            manifest = build_manifest(stored, model_dir, MLFLOW_WRITTEN)
        except TreeMismatchError as exc:
            raise ConfigError(f"logged model {model_id} at {location}: {exc}") from exc
        raw = manifest_bytes(manifest)
        (work / MANIFEST_NAME).write_bytes(raw)
        client.log_model_artifact(model_id, str(work / MANIFEST_NAME))
    digest = sha256_bytes(raw)
    logger.info("sealed logged model %s: %d files, manifest sha256 %s", model_id, len(manifest["files"]), digest)
    return digest


@contextmanager
def verified_version(tracking_uri: str, model_name: str, ref: str) -> Iterator[VerifiedVersion]:
    """Download version `ref` (number or alias) into a private temp dir and yield it only if it matches the registry.

    Raises ArtifactIntegrityError naming the version and the file on: no manifest tag (a version registered
    before manifests), a manifest whose sha256 differs from the tag, a symlink, a path leaving the tree, a file
    added, removed or edited. Nothing from the artifact is parsed or imported before these checks.
    """
    client = MlflowClient(tracking_uri)
    version = resolve(client, model_name, ref)
    number = str(version.version)
    tags = dict(version.tags or {})
    expected = tags.get(MANIFEST_TAG)
    if not expected:
        raise ArtifactIntegrityError(
            model_name,
            number,
            MANIFEST_NAME,
            f"{MANIFEST_NAME!r} cannot be checked: the version has no {MANIFEST_TAG} tag (registered before "
            f"retrain sealed its artifacts). {REREGISTER_HINT}",
        )
    location = client.get_model_version_download_uri(model_name, number)
    with private_dir() as work:
        try:
            root = _download(location, work / "artifact", tracking_uri)
            manifest_path = root / MANIFEST_NAME
            if manifest_path.is_symlink() or not manifest_path.is_file():
                raise TreeMismatchError(MANIFEST_NAME, "is missing from the artifact")
            raw = manifest_path.read_bytes()
            if sha256_bytes(raw) != expected:
                raise TreeMismatchError(
                    MANIFEST_NAME, f"sha256 {sha256_bytes(raw)[:12]}... differs from the registry's {expected[:12]}..."
                )
            manifest = parse_manifest(raw)
            for name in MLFLOW_WRITTEN:
                if name not in manifest["files"] and (root / name).is_file() and not (root / name).is_symlink():
                    (root / name).unlink()  # MLflow's own note of the registered name, never read by retrain
            check_tree(root, manifest)
        except TreeMismatchError as exc:
            logger.error("model %s version %s: artifact file %s", model_name, number, exc.describe())
            raise ArtifactIntegrityError(model_name, number, exc.file, exc.describe()) from None
        count = len(manifest["files"])
        logger.info("model %s version %s: %d artifact files match the registry", model_name, number, count)
        yield VerifiedVersion(model_name, number, root, root / manifest["model_dir"], tags)


def load_verified_predictor(verified: VerifiedVersion, compiled: str = "off") -> ServingModel:
    """The verified version's model, loaded by the installed retrain code (never by mlflow.pyfunc).

    `compiled`: the compiled-forest mode (`retrain.serving.compiled.MODES`; `retrain serve-model` passes its flag).
    """
    from retrain.serving.flavor import load_serving_model  # LightGBM and sklearn only when a model is loaded

    return load_serving_model(verified.model_dir, compiled=compiled)


def integrity(tracking_uri: str, model_name: str, versions: list[str]) -> dict[str, str]:
    """Each version's check result: `ok`, or why it is refused (`retrain history --verify`)."""
    results: dict[str, str] = {}
    for version in versions:
        try:
            with verified_version(tracking_uri, model_name, version):
                results[version] = "ok"
        except ArtifactIntegrityError as exc:
            results[version] = f"REFUSED: {exc.args[0].split(': ', 1)[-1]}"
        except ConfigError as exc:
            results[version] = f"missing: {exc}"
    return results


RECORD_SHA_TAG = "retrain.gate_record_sha256"
"""Tag on every registered version: sha256 of the gate record its `retrain.gate_record` URI points at."""


def log_json(data: Mapping[str, object], name: str) -> str:
    """Log `data` as the active run's artifact `name` (sorted, indented JSON) and return the sha256 of those bytes.

    The hash is recorded in the registry, so a reader can check the record before parsing it (`verified_json`).
    """
    import mlflow

    body = json.dumps(data, indent=2, sort_keys=True, default=str).encode() + b"\n"
    with private_dir() as tmp:
        path = tmp / name
        path.write_bytes(body)
        mlflow.log_artifact(str(path))
    return sha256_bytes(body)


def verified_json(tracking_uri: str, uri: str, sha256: str | None, *, model_name: str, version: str) -> object:
    """The JSON artifact at `uri` after its bytes matched `sha256` from the registry (ArtifactIntegrityError if not)."""
    name = uri.rsplit("/", 1)[-1]
    if not sha256:
        raise ArtifactIntegrityError(model_name, version, name, f"{name}: the registry records no {RECORD_SHA_TAG}")
    with private_dir() as tmp:
        try:
            path = Path(download_artifacts(artifact_uri=uri, dst_path=str(tmp), tracking_uri=tracking_uri))
        except (MlflowException, OSError) as exc:
            raise ArtifactIntegrityError(model_name, version, name, f"{uri} cannot be read: {exc}") from exc
        if not path.is_file():
            raise ArtifactIntegrityError(model_name, version, name, f"{uri} is not a regular file")
        body = path.read_bytes()
    actual = sha256_bytes(body)
    if actual != sha256:
        raise ArtifactIntegrityError(
            model_name, version, name, f"{uri}: sha256 {actual} differs from {sha256} recorded in the registry"
        )
    return json.loads(body)
