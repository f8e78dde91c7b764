"""Model factory and safe persistence: preprocessing lives inside the model, nothing is pickled.

`build_model` returns an unfitted scikit-learn Pipeline that takes the raw feature columns, so training
and serving cannot drift. What each family is (its builder, tasks, save format, trusted types, threads)
is its record in retrain/models/families.py; the estimator follows `dataset.task` (e.g. LGBMClassifier for
binary / multiclass, LGBMRegressor for regression). `save_model` writes the family's format, LightGBM text
or skops (with the family's pinned trusted-types list), plus a JSON manifest that records the family, task
and labels; `load_predictor` reads them back without executing arbitrary code, and its `predict_scores`
returns the shapes of retrain/metrics.py (P(positive), (n, k) probabilities, predictions).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from retrain.errors import ConfigError
from retrain.models.calibrator import Calibrator
from retrain.models.families import FAMILIES, Family, Threads, check_family, get_family
from retrain.models.preprocessing import CategoryEncoder, encode_frame

logger = logging.getLogger(__name__)

MANIFEST = "model.json"
FILE_HASHES = "files"
"""Manifest key: {file name: sha256} of the model's data files, checked before they are parsed."""
BOOSTER = "booster.txt"
PIPELINE = "pipeline.skops"

STACKING = "stacking.json"
CALIBRATION = "calibration.json"
"""Optional: a probability calibrator (retrain.evaluation.calibration.Calibrator as JSON) applied to the scores."""
CONFIDENCE = "confidence.json"
"""Optional: the confidence threshold chosen on validation (abstain below it), read by serving."""

SKOPS_TRUSTED_TYPES: frozenset[str] = frozenset().union(*(f.trusted_types for f in FAMILIES.values()))
"""Every type some family's skops file may hold beyond skops' own safe defaults (the union of the families'
`trusted_types`). A file is loaded with its own family's list only; anything else in it is refused."""

SERVE_ONE_THREAD_ROWS = 1000
"""The serving thread rule (`Threads` in retrain/models/families.py, `ServeThreads`): a prediction of at most this
many rows is a request and runs on one thread in every family (OpenMP and BLAS bounded to one, LightGBM
`num_threads=1`); more rows are a batch, on every available core in families whose record sets
`threads.parallel_batches`, on one thread in the others. Threads save little on a request and stall it when the
cores are busy (hgb, 500 rows on 2 cores: idle 9 ms on 2 threads, 10 ms on one; at load 4-5.5, 58-1,218 ms on
2 threads, 19-105 ms on one), while a batch of thousands of rows gains from every core."""


def monotone_params(
    family: str, monotone: Mapping[str, int], numeric: list[str], categorical: list[str], *, task: str | None = None
) -> dict[str, Any]:
    """The family's monotone-constraint hyperparameter, in the column order its preprocessing produces.

    Empty when the family (or, with `task` given, the family on that task) cannot be built monotone.
    """
    if not monotone:
        return {}
    param = get_family(family).monotone_for(task)
    order = [*numeric, *categorical]  # every builder's preprocessing puts the numeric columns first
    unknown = [c for c in monotone if c not in numeric]
    if unknown:
        raise ConfigError(f"candidates.monotone: {unknown} are not numeric features")
    signs = [int(monotone.get(c, 0)) for c in order]
    return {param: signs} if param else {}


def build_model(
    family: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str], *, task: str = "binary"
) -> Pipeline:
    """An unfitted Pipeline (preprocessing + estimator) for a family, its hyperparameters and the task."""
    check_family(family, task)
    record = get_family(family)
    if record.build is None:
        raise ValueError(f"{family} is assembled from tuned base models (fit_stacking), not built from params")
    return record.build(task, params, numeric, categorical)


def expand_proba(proba: np.ndarray, classes: Sequence[int], n_classes: int) -> np.ndarray:
    """(n, k) probabilities in label order from a model that saw only some classes in training.

    A class the model never saw gets probability 0; a binary-shaped 1-D output is P(classes[1]).
    """
    proba = np.asarray(proba, dtype=float)
    if proba.ndim == 1:
        proba = np.column_stack([1.0 - proba, proba])
    full = np.zeros((proba.shape[0], n_classes))
    full[:, np.asarray(classes, dtype=np.int64)] = proba
    return full


def task_scores(proba_or_pred: np.ndarray, task: str, classes: Sequence[int], n_classes: int) -> np.ndarray:
    """Model output in the task's score shape: P(positive), (n, k) probabilities, or predictions."""
    if task == "regression":
        return np.asarray(proba_or_pred, dtype=float).reshape(-1)
    full = expand_proba(proba_or_pred, classes, n_classes)
    return full[:, 1] if task == "binary" else full


def pipeline_scores(model: Pipeline, X: pd.DataFrame, task: str, n_classes: int) -> np.ndarray:
    """Scores of a fitted Pipeline in the task's shape (used in CV, refit and serving alike)."""
    if task == "regression":
        return np.asarray(model.predict(X), dtype=float)
    return task_scores(model.predict_proba(X), task, [int(c) for c in model.classes_], n_classes)


class Predictor(Protocol):
    """What evaluation and serving need of a model: scores in the task's shape for raw rows."""

    features: list[str]
    task: str
    labels: list[str] | None

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """P(positive) (binary), (n, k) probabilities in label order (multiclass), predictions (regression)."""
        ...


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; `os.cpu_count()` where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Threadpools:
    """The OpenMP and BLAS libraries loaded in this process, found once and bounded around a prediction.

    threadpoolctl's `threadpool_limits()` rescans the loaded libraries on every call (~3-6 ms, more than a
    single-row prediction); this keeps the library controllers of one scan and only reads and sets their
    thread counts per call (~10 us). The scan is redone when a model is loaded (`refresh_threadpools`), so a
    library a later model brings in (scikit-learn's OpenMP runtime) is bounded too.
    """

    def __init__(self) -> None:
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController()
        self.openmp = list(controller.select(user_api="openmp").lib_controllers)
        self.blas = list(controller.select(user_api="blas").lib_controllers)

    @contextmanager
    def limit(self, openmp: int) -> Iterator[None]:
        """OpenMP at `openmp` threads and BLAS at one for the block, then the previous counts back.

        OpenMP's count is the calling thread's (what its parallel regions use); BLAS's is process-wide.
        """
        changed = []
        for libraries, wanted in ((self.openmp, openmp), (self.blas, 1)):
            for library in libraries:
                before = library.get_num_threads()
                if before != wanted:
                    library.set_num_threads(wanted)
                    changed.append((library, before))
        try:
            yield
        finally:
            for library, before in reversed(changed):
                library.set_num_threads(before)


_THREADPOOLS: list[Threadpools] = []
"""The current scan (at most one entry), replaced by `refresh_threadpools`."""


def threadpools() -> Threadpools:
    """The OpenMP / BLAS libraries as last scanned (scanned now if never)."""
    if not _THREADPOOLS:
        refresh_threadpools()
    return _THREADPOOLS[0]


def refresh_threadpools() -> None:
    """Rescan the loaded libraries (after loading a model: its estimator's native libraries are loaded by then)."""
    _THREADPOOLS[:] = [Threadpools()]


@dataclass(frozen=True)
class ServeThreads:
    """The serving thread rule of one family (its record's `Threads`), applied by its predictor to every call.

    A request, at most `SERVE_ONE_THREAD_ROWS` rows, runs on one thread; a batch on `batch_threads`: every
    available core when the family's record sets `threads.parallel_batches`, else one. LightGBM's booster
    takes the count as `num_threads`; scikit-learn pipelines and the stacking meta-learner run under `limit`
    (OpenMP at the count, BLAS at one; `n_jobs` is 1 from `serve_params`).
    """

    batch_threads: int = 1

    @classmethod
    def of(cls, threads: Threads) -> ServeThreads:
        """The rule of a family's `Threads` record on this machine."""
        return cls(available_cores() if threads.parallel_batches else 1)

    def threads(self, rows: int) -> int:
        """Threads for a prediction of `rows` rows."""
        return 1 if rows <= SERVE_ONE_THREAD_ROWS else self.batch_threads

    def limit(self, rows: int) -> AbstractContextManager[None]:
        """Context manager: OpenMP at `threads(rows)`, BLAS at one (see `Threadpools.limit`)."""
        return threadpools().limit(self.threads(rows))


class LightGBMPredictor:
    """Serving form of the LightGBM family: booster text plus category lists from JSON."""

    def __init__(
        self,
        booster: lgb.Booster,
        numeric: list[str],
        categories: dict[str, list[str]],
        *,
        task: str = "binary",
        labels: list[str] | None = None,
        classes: list[int] | None = None,
        serve: ServeThreads | None = None,
    ) -> None:
        self.booster = booster
        self.numeric = numeric
        self.categories = categories
        self.features = [*numeric, *categories]
        self.task = task
        self.labels = labels
        self.classes = classes if classes is not None else [0, 1]
        self.serve = serve if serve is not None else ServeThreads.of(FAMILIES["lightgbm"].threads)

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """Scores in the task's shape from the raw columns (threads: the family's rule, `ServeThreads`)."""
        threads = self.serve.threads(len(X))
        raw = self.booster.predict(encode_frame(X, self.numeric, self.categories), num_threads=threads)
        return task_scores(np.asarray(raw), self.task, self.classes, len(self.labels or ()) or 2)


class PipelinePredictor:
    """Serving form of scikit-learn families: the fitted Pipeline restored by skops.

    Every prediction runs under the family's thread rule (`serve`, see `ServeThreads`; default: one thread).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        features: list[str],
        *,
        task: str = "binary",
        labels: list[str] | None = None,
        serve: ServeThreads | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.features = features
        self.task = task
        self.labels = labels
        self.serve = serve if serve is not None else ServeThreads()

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """Scores in the task's shape from the raw columns (OpenMP / BLAS bounded by the family's rule)."""
        n_classes = len(self.labels or ()) or 2
        with self.serve.limit(len(X)):
            return pipeline_scores(self.pipeline, X[self.features], self.task, n_classes)


STACK_EPS = 1e-6
"""Probabilities are clipped to [eps, 1 - eps] before taking logits / logs for the meta-learner."""


def stack_features(base_scores: Sequence[np.ndarray], task: str) -> np.ndarray:
    """Meta-learner inputs: each base's logit (binary), log-probabilities (multiclass) or prediction."""
    columns = []
    for scores in base_scores:
        values = np.asarray(scores, dtype=float)
        if task == "regression":
            columns.append(values.reshape(-1, 1))
        elif task == "binary":
            p = np.clip(values, STACK_EPS, 1.0 - STACK_EPS)
            columns.append(np.log(p / (1.0 - p)).reshape(-1, 1))
        else:
            columns.append(np.log(np.clip(values, STACK_EPS, 1.0)))
    return np.hstack(columns)


@dataclass(frozen=True)
class MetaLearner:
    """A stacking meta-learner as plain numbers (logistic / ridge coefficients), so it is saved as JSON."""

    task: str
    bases: tuple[str, ...]
    coef: tuple[tuple[float, ...], ...]
    intercept: tuple[float, ...]
    classes: tuple[int, ...] | None = None

    def predict(self, features: np.ndarray, n_classes: int) -> np.ndarray:
        """Scores in the task's shape from `stack_features` of the bases (same order as `bases`)."""
        z = features @ np.asarray(self.coef, dtype=float).T + np.asarray(self.intercept, dtype=float)
        if self.task == "regression":
            return z[:, 0]
        if z.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-z[:, 0]))
            proba = np.column_stack([1.0 - positive, positive])
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            proba = e / e.sum(axis=1, keepdims=True)
        return task_scores(proba, self.task, list(self.classes or (0, 1)), n_classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what `stacking.json` holds)."""
        return {
            "task": self.task,
            "bases": list(self.bases),
            "coef": [list(r) for r in self.coef],
            "intercept": list(self.intercept),
            "classes": None if self.classes is None else list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetaLearner:
        """Inverse of `to_dict`."""
        classes = data.get("classes")
        return cls(
            task=data["task"],
            bases=tuple(data["bases"]),
            coef=tuple(tuple(float(v) for v in row) for row in data["coef"]),
            intercept=tuple(float(v) for v in data["intercept"]),
            classes=None if classes is None else tuple(int(c) for c in classes),
        )


def fit_meta(
    bases: Sequence[str],
    base_scores: Sequence[np.ndarray],
    y: np.ndarray,
    task: str,
    params: Mapping[str, Any] | None = None,
) -> MetaLearner:
    """Fit the meta-learner (LogisticRegression / Ridge, `candidates.stacking.fixed`) on out-of-fold scores."""
    features = stack_features(base_scores, task)
    options = {k: v for k, v in (params or {}).items() if k != "random_state"}
    if task == "regression":
        ridge = Ridge(**{"alpha": 1.0, **options}).fit(features, y)
        return MetaLearner(task, tuple(bases), (tuple(float(v) for v in ridge.coef_),), (float(ridge.intercept_),))
    logistic = LogisticRegression(**{"C": 1.0, "max_iter": 1000, **options}).fit(features, y)
    return MetaLearner(
        task,
        tuple(bases),
        tuple(tuple(float(v) for v in row) for row in logistic.coef_),
        tuple(float(v) for v in logistic.intercept_),
        tuple(int(c) for c in logistic.classes_),
    )


class StackingPredictor:
    """Serving form of `stacking`: each base model loaded in its own safe format, plus the JSON meta-learner.

    Each base predicts under its own family's thread rule; the meta-learner under stacking's (`serve`).
    """

    def __init__(
        self,
        bases: list[Predictor],
        meta: MetaLearner,
        features: list[str],
        *,
        labels: list[str] | None = None,
        serve: ServeThreads | None = None,
    ) -> None:
        self.bases = bases
        self.meta = meta
        self.features = features
        self.task = meta.task
        self.labels = labels
        self.serve = serve if serve is not None else ServeThreads.of(FAMILIES["stacking"].threads)

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """The meta-learner over the bases' scores for the raw rows."""
        base_scores = [b.predict_scores(X) for b in self.bases]
        with self.serve.limit(len(X)):
            return self.meta.predict(stack_features(base_scores, self.task), len(self.labels or ()) or 2)


def canonical_ids(schema: str) -> str:
    """skops' schema with object ids numbered in document order, and none shared between scalar (JSON) nodes.

    Whether two equal floats are one object is an accident of the process: the same model after a pickle
    round trip (a Dask worker's result) has a separate `nan` per imputer where the fitting process had one.
    Sharing still holds for real objects (arrays, estimators), whose identity skops restores on load.
    """
    tree = json.loads(schema)
    ids: dict[int, int] = {}
    fresh = itertools.count()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__id__" in node:
                scalar = node.get("__loader__") == "JsonNode"
                node["__id__"] = next(fresh) if scalar else ids.setdefault(node["__id__"], next(fresh))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return json.dumps(tree, separators=(",", ":"))


def canonical_skops(blob: bytes) -> bytes:
    """The same skops archive with stable member names and timestamps, so equal models give equal bytes.

    skops names array files and objects after `id()` and stamps the current time; all would change
    the file's md5 (and dvc.lock, and the model hash) on every refit of an identical model.
    """
    with zipfile.ZipFile(io.BytesIO(blob)) as source:
        schema = source.read("schema.json").decode()
        members = [n for n in source.namelist() if n != "schema.json"]
        order = sorted(members, key=lambda n: (schema.find(f'"{n}"'), n))
        names = {old: f"{i:05d}{Path(old).suffix}" for i, old in enumerate(order)}
        for old, new in names.items():
            schema = schema.replace(f'"{old}"', f'"{new}"')
        schema = canonical_ids(schema)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
            for old in order:
                target.writestr(zipfile.ZipInfo(names[old], date_time=(1980, 1, 1, 0, 0, 0)), source.read(old))
            target.writestr(zipfile.ZipInfo("schema.json", date_time=(1980, 1, 1, 0, 0, 0)), schema)
    return out.getvalue()


def save_model(
    pipeline: Pipeline,
    family: str,
    features: list[str],
    directory: Path,
    *,
    task: str = "binary",
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """Write a fitted Pipeline in safe formats with a manifest (family, task, labels); returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "family": family,
        "features": features,
        "task": task,
        "labels": list(labels) if labels is not None and task != "regression" else None,
    }
    if task != "regression":
        manifest["classes"] = [int(c) for c in pipeline.classes_]
    written = []
    record = get_family(family)
    if record.format == "lightgbm-text":
        encoder: CategoryEncoder = pipeline.named_steps["prep"]
        booster_path = directory / BOOSTER
        booster_path.write_text(pipeline.named_steps["model"].booster_.model_to_string())
        # the booster reads columns by position: keep the categorical order explicit (JSON keys get sorted)
        manifest.update(
            format="lightgbm-text",
            numeric=encoder.numeric,
            categorical=encoder.categorical,
            categories=encoder.categories_,
        )
        written.append(booster_path)
    elif record.format == "skops":
        pipe_path = directory / PIPELINE
        pipe_path.write_bytes(canonical_skops(_skops_dumps(pipeline, record)))
        manifest.update(format="skops")
        written.append(pipe_path)
    else:
        raise ValueError(f"{family} models are saved by their own writer (save_stacking), not save_model")
    manifest[FILE_HASHES] = {path.name: file_sha256(path) for path in written}
    manifest_path = directory / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return [manifest_path, *written]


def _skops_dumps(pipeline: Pipeline, record: Family) -> bytes:
    """skops bytes of the Pipeline with the family's serving hyperparameters (e.g. n_jobs 1) in the file.

    They are set only for the dump and restored after, so the file does not depend on the threads the
    model happened to train with (the same model gives the same bytes on any machine).
    """
    import skops.io as sio  # here, not at the top: importing skops costs ~0.8 CPU s (it pulls in pytest)

    serve = dict(record.threads.serve_params)
    if not serve:
        return sio.dumps(pipeline)
    model = pipeline.named_steps["model"]
    trained = {k: v for k, v in model.get_params(deep=False).items() if k in serve}
    model.set_params(**serve)
    try:
        return sio.dumps(pipeline)
    finally:
        model.set_params(**trained)


def save_stacking(
    bases: Mapping[str, Pipeline],
    meta: MetaLearner,
    features: list[str],
    directory: Path,
    *,
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """Write a stacking model: one subdirectory per base (its own safe format) and the meta-learner as JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for family in meta.bases:
        written += save_model(bases[family], family, features, directory / family, task=meta.task, labels=labels)
    meta_path = directory / STACKING
    meta_path.write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n")
    manifest = {
        "family": "stacking",
        "format": "stacking",
        "features": features,
        "task": meta.task,
        "labels": list(labels) if labels is not None and meta.task != "regression" else None,
        "bases": list(meta.bases),
        FILE_HASHES: {STACKING: file_sha256(meta_path)},
    }
    manifest_path = directory / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return [manifest_path, meta_path, *written]


class CalibratedPredictor:
    """Any predictor with a JSON calibrator applied to its scores (what is gated is what is served).

    The inner model keeps its family's thread rule; the calibrator is element-wise NumPy (no thread pool).
    """

    def __init__(self, inner: Predictor, calibrator: Calibrator) -> None:
        self.inner = inner
        self.calibrator = calibrator
        self.features = inner.features
        self.task = inner.task
        self.labels = inner.labels

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """The inner model's scores, calibrated."""
        return self.calibrator.apply(self.inner.predict_scores(X))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Deterministic JSON (sorted keys, fixed indent): identical inputs give byte-identical files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_calibration(directory: Path, calibrator: Calibrator) -> None:
    """Store the calibrator next to a saved model; `load_predictor` then applies it."""
    _write_json(directory / CALIBRATION, calibrator.to_dict())


def save_confidence(directory: Path, threshold: float, labels: Sequence[str] | None) -> None:
    """Store the validation-chosen confidence threshold (and class labels) next to a saved model."""
    _write_json(
        directory / CONFIDENCE,
        {"threshold": float(threshold), "labels": None if labels is None else [str(v) for v in labels]},
    )


def load_confidence(directory: Path) -> dict | None:
    """The stored confidence decision ({"threshold", "labels"}), or None when the model has none."""
    path = directory / CONFIDENCE
    return read_model_json(path) if path.exists() else None


def load_predictor(directory: Path) -> Predictor:
    """Load a saved model (calibrated when calibration.json is present) without unpickling anything."""
    predictor = _load_uncalibrated(directory)
    path = directory / CALIBRATION
    if path.exists():
        try:
            calibrator = Calibrator.from_dict(read_model_json(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelIntegrityError(f"{path}: not a calibration map: {exc}") from exc
        return CalibratedPredictor(predictor, calibrator)
    return predictor


def file_sha256(path: Path) -> str:
    """sha256 of a model file, recorded in the manifest when saved and checked before it is parsed."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class ModelIntegrityError(ValueError):
    """A model file whose bytes are not those its manifest recorded: it is never handed to a parser."""


def read_model_json(path: Path) -> Any:
    """A JSON file of a saved model (calibration, confidence threshold), or an error naming the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{path}: cannot read the model file: {exc}") from exc


def read_manifest(directory: Path) -> dict[str, Any]:
    """The model's manifest (model.json), or an error naming the file when it is missing or not JSON."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{path}: cannot read the model manifest: {exc}") from exc
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise ModelIntegrityError(f"{path}: not a model manifest (no 'format')")
    return manifest


def verified_file(directory: Path, manifest: Mapping[str, Any], name: str) -> Path:
    """The model file `name`, after checking its sha256 against the manifest (before any parser reads it).

    Manifests written before hashes were recorded have no `files` entry: those load with a warning.
    """
    path = directory / name
    recorded = manifest.get(FILE_HASHES)
    if recorded is None:
        logger.warning(
            "%s: no file hashes recorded (a model saved by an older retrain): %s not verified", directory, name
        )
        return path
    expected = recorded.get(name) if isinstance(recorded, Mapping) else None
    if expected is None:
        raise ModelIntegrityError(f"{directory / MANIFEST}: no hash recorded for {name}: refusing to parse it")
    if not path.is_file():
        raise ModelIntegrityError(f"{path}: model file missing (the manifest records sha256 {expected})")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{path}: sha256 {actual} differs from {expected} recorded in {directory / MANIFEST}: "
            "the model file is corrupt or was changed; refusing to parse it"
        )
    return path


def _load_uncalibrated(directory: Path) -> Predictor:
    """Load a saved model without unpickling: LightGBM text, or skops restricted to trusted types.

    Every model file is hash-checked against the manifest before LightGBM or skops parses it.
    """
    manifest = read_manifest(directory)
    task = manifest.get("task", "binary")
    labels = manifest.get("labels")
    record = FAMILIES.get(manifest.get("family", ""))
    if manifest["format"] == "lightgbm-text":
        booster_file = verified_file(directory, manifest, BOOSTER)
        try:
            booster = lgb.Booster(model_file=str(booster_file))
        except lgb.basic.LightGBMError as exc:
            raise ModelIntegrityError(f"{booster_file}: LightGBM cannot parse the booster: {exc}") from exc
        categories = {c: manifest["categories"][c] for c in manifest["categorical"]}
        serve = ServeThreads.of((record or FAMILIES["lightgbm"]).threads)
        return LightGBMPredictor(
            booster,
            manifest["numeric"],
            categories,
            task=task,
            labels=labels,
            classes=manifest.get("classes"),
            serve=serve,
        )
    if manifest["format"] == "skops":
        import skops.io as sio  # only scikit-learn models need it (see save_model)

        if record is None or record.format != "skops":
            raise ValueError(
                f"{directory / MANIFEST}: family {manifest.get('family')!r} has no skops trusted-types list"
            )
        path = verified_file(directory, manifest, PIPELINE)
        untrusted = set(sio.get_untrusted_types(file=path))
        refused = untrusted - record.trusted_types
        if refused:
            raise ValueError(f"{path}: refusing to load types outside {record.name}'s trusted list: {sorted(refused)}")
        pipeline = sio.load(path, trusted=sorted(untrusted))
        if record.threads.serve_params:
            pipeline.named_steps["model"].set_params(**record.threads.serve_params)
        refresh_threadpools()  # the estimator's native libraries (scikit-learn's OpenMP) are loaded by now
        serve = ServeThreads.of(record.threads)
        return PipelinePredictor(pipeline, manifest["features"], task=task, labels=labels, serve=serve)
    if manifest["format"] == "stacking":
        meta = MetaLearner.from_dict(json.loads(verified_file(directory, manifest, STACKING).read_text()))
        bases = [load_predictor(directory / family) for family in meta.bases]
        serve = ServeThreads.of((record or FAMILIES["stacking"]).threads)
        return StackingPredictor(bases, meta, manifest["features"], labels=labels, serve=serve)
    raise ValueError(f"{directory / MANIFEST}: unknown model format {manifest['format']!r}")


def serve_output(predictor: Predictor, X: pd.DataFrame) -> np.ndarray | pd.DataFrame:
    """What the pyfunc returns for raw rows: scores, or one probability column per label (multiclass)."""
    missing = [c for c in predictor.features if c not in X.columns]
    if missing:
        raise ValueError(f"input is missing feature columns {missing}")
    scores = predictor.predict_scores(X)
    if predictor.task == "multiclass":
        return pd.DataFrame(scores, columns=[str(v) for v in predictor.labels or ()], index=X.index)
    return np.asarray(scores, dtype=float)


def scores_from_output(output: Any, task: str, labels: list[str] | None) -> np.ndarray:
    """Scores in `predict_scores` shape from a served output (the inverse of `serve_output`).

    A multiclass output must have a column for every label; they are read by name, so the champion is
    compared on the same classes whatever its column order.
    """
    if task == "multiclass":
        frame = output if isinstance(output, pd.DataFrame) else pd.DataFrame(np.asarray(output))
        wanted = [str(v) for v in labels or ()]
        missing = [c for c in wanted if c not in {str(c) for c in frame.columns}]
        if missing:
            raise ValueError(f"served output has no column for labels {missing} (columns {list(frame.columns)})")
        frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
        return frame[wanted].to_numpy(dtype=float)
    values = output.to_numpy() if isinstance(output, (pd.DataFrame, pd.Series)) else np.asarray(output)
    values = np.asarray(values, dtype=float)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"served output has shape {values.shape}; a {task} model returns one value per row")
    return values
