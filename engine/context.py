"""What every stage task shares: its context, its content-addressed cache key, and MLflow runs.

A stage's cache key is built from content only: the md5 (DVC's hash) of each input file, the values of
the params keys it reads, the md5 of every project file its module imports (derived: engine/codedeps.py) and
of the dependency lock, plus what its `key_inputs` hook returns (the current champion for `evaluate`, the
drift reference for `validate`). Paths, DataFrames and run metadata never enter it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow.store.db.db_types import DATABASE_ENGINES
from mlflow.tracking import MlflowClient

from adapters import mlflow_errors, mlflow_store
from adapters.dvc_store import file_md5
from adapters.jsonfile import read_json
from adapters.mlflow_parent import EXPERIMENT_KIND_TAG, TRAINING_KIND
from engine.stage import Stage, render_path
from retrain.catalog import LOCK_FILE, SCHEMA
from retrain.config import DatasetConfig, Params, lookup, params_dict, stable_hash
from retrain.data.schema import from_json as schema_from_json
from retrain.data.sources import display, file_problem, parse_source, source_files
from retrain.errors import DataError
from retrain.paths import resolve

logger = logging.getLogger(__name__)

CACHE_DIR = ".retrain/cache"


@dataclass(frozen=True)
class Tracking:
    """Where and how a stage logs to MLflow; never part of a cache key."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext:
    """Everything a stage task needs: the stage, the typed params, the root and tracking."""

    definition: Stage
    params: Params
    root: Path
    tracking: Tracking
    external: dict[str, str] = field(default_factory=dict)
    """Cache-key inputs from outside the workspace, as the stage's `key_inputs` hook returned them."""
    dry_run: bool = False
    """Run every check but change nothing outside the workspace (a stage with side effects reports instead)."""

    @property
    def stage(self) -> str:
        """The stage's name (its MLflow run name, log prefix and cache-key prefix)."""
        return self.definition.name

    @functools.cached_property
    def dataset(self) -> DatasetConfig:
        """The dataset with its effective schema: declared in params, or inferred by ingest (schema.json, read once)."""
        declared = self.params.dataset
        if declared.columns is not None and (declared.labels is not None or not declared.is_classification):
            return declared
        schema_file = self.path(SCHEMA)
        if not schema_file.exists():
            raise DataError(f"stage {self.stage}: {SCHEMA} is missing (ingest writes the inferred schema there)")
        return schema_from_json(declared, read_json(schema_file))

    def path(self, relpath: str) -> Path:
        """A project path, anchored at the root."""
        return resolve(self.root, relpath)

    def dep_paths(self) -> list[tuple[str, Path]] | None:
        """The stage's input files (templates filled from params; unset optional inputs dropped).

        A glob source stands for every file it matches; None when an input is a database that can only
        be known by querying it (the stage is then never cached; its output hash still is).
        """
        values = params_dict(self.params)
        deps = []
        for template in self.definition.deps:
            rel = render_path(template, values)
            if rel is None:
                continue
            query_key = self.definition.sources.get(template)
            if query_key is None:
                deps.append((rel, self.path(rel)))
                continue
            files = self._source_files(template.removeprefix("${").removesuffix("}"), rel, query_key)
            if files is None:
                return None
            deps.extend((str(f.relative_to(self.root)) if f.is_relative_to(self.root) else str(f), f) for f in files)
        return deps

    def _source_files(self, key: str, spec: str, query_key: str) -> list[Path] | None:
        """A declared source's files, or a DataError naming its params key: the user's path, not a stage's output."""
        source = parse_source(spec, lookup(self.params, query_key))
        problem = file_problem(self.root, spec) if source.kind == "file" else None
        files: list[Path] | None = None
        try:
            files = source_files(self.root, source)
        except DataError as exc:
            problem = str(exc)
        missing = [f for f in files or [] if not f.exists()]
        if problem is None and missing:
            problem = f"{display(spec)}: {missing[0]} does not exist"
        if problem is not None:
            raise DataError(
                f"stage {self.stage}: {key}: {problem}; check {key} in the params file "
                "(`retrain check` lists every problem of the params and their data at once)"
            )
        return files

    def key_material(self) -> dict[str, Any] | None:
        """The content the cache key is made of (also logged, so a miss can be explained)."""
        dep_paths = self.dep_paths()
        if dep_paths is None:
            return None
        deps = {}
        for rel, path in dep_paths:
            if not path.exists():
                raise DataError(
                    f"stage {self.stage}: input {rel} does not exist; an earlier stage writes it (has that stage run?)"
                )
            deps[rel] = tree_md5(path)
        return {
            "stage": self.stage,
            "deps": deps,
            "params": {key: lookup(self.params, key) for key in self.definition.params},
            "code": {rel: file_md5(self.path(rel)) for rel in self.definition.code(self.root)},
            "env": file_md5(self.path(LOCK_FILE)) if self.path(LOCK_FILE).exists() else "no-lock",
            "external": self.external,
        }

    def cache_key(self) -> str | None:
        """sha256 of the key material: equal content gives an equal key on any machine or path."""
        material = self.key_material()
        return None if material is None else f"{self.stage}-{stable_hash(material)}"


def tree_md5(path: Path) -> str:
    """md5 of a file, or a stable hash of every file's relative path and md5 under a directory."""
    if path.is_file():
        return file_md5(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return stable_hash({str(p.relative_to(path)): file_md5(p) for p in files})


def output_manifest(ctx: StageContext) -> dict[str, str]:
    """md5 of every file the stage wrote (outs, metrics, plots), keyed by path relative to the root."""
    manifest = {}
    for out in ctx.definition.files:
        path = ctx.path(out)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            manifest[str(file.relative_to(ctx.root))] = file_md5(file)
    return manifest


def clear_outputs(ctx: StageContext) -> None:
    """Remove a stage's previous outputs so a failed run can never leave stale files looking fresh."""
    for out in ctx.definition.files:
        path = ctx.path(out)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def git_commit(root: Path) -> str:
    """The checkout's commit (with `-dirty` when tracked files changed), or `unknown` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def ensure_experiment(tracking_uri: str, name: str, root: Path) -> str:
    """Experiment id, creating it with artifacts under the root (not the cwd) when new.

    Any database URI (sqlite, postgresql+psycopg2, mysql, ...) would otherwise put artifacts in MLflow's
    default `./mlruns` of the cwd; a tracking server (http://) decides its artifact root itself.

    It is tagged as a model-training experiment (`mlflow.experimentKind`), so the MLflow 3 UI opens it on the runs
    table rather than the GenAI traces view; an existing experiment without the tag gets it (one set by hand stays).
    The first MLflow access of a pipeline run or stage: the store is made ready first (tables created under a
    cross-process lock, so concurrent first use of an empty store succeeds: adapters/mlflow_store.py).
    """
    try:
        return _ensure_experiment(tracking_uri, name, root)
    except Exception as exc:  # a read-only database surfaces here first: name it (adapters/mlflow_errors.py)
        translated = mlflow_errors.translate(exc, tracking_uri)
        if translated is exc:
            raise
        raise translated from exc


def _ensure_experiment(tracking_uri: str, name: str, root: Path) -> str:
    """`ensure_experiment` without the translation of a read-only store's error."""
    mlflow_store.ready(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id
    database = urlparse(tracking_uri).scheme.split("+")[0] in DATABASE_ENGINES
    location = (root / "mlartifacts").resolve().as_uri() if database else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except mlflow.exceptions.MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def base_tags(root: Path, params: Params, trigger: str) -> dict[str, str]:
    """Tags every run of this pipeline run carries (data hash is added once it is known)."""
    env = root / LOCK_FILE
    return {
        "retrain.git_commit": git_commit(root),
        "retrain.params_hash": stable_hash(params_dict(params)),
        "retrain.env_hash": file_md5(env) if env.exists() else "no-lock",
        "retrain.seed": str(params.seed),
        "retrain.trigger": trigger,
    }


@contextlib.contextmanager
def stage_run(ctx: StageContext) -> Iterator[mlflow.ActiveRun]:
    """An MLflow child run named after the stage, tagged like its parent and with its owner process (recovery),
    closed FAILED on an error and KILLED when the process is stopped (adapters/mlflow_runs.py)."""
    mlflow.set_tracking_uri(ctx.tracking.tracking_uri)
    from adapters.mlflow_runs import open_run

    tags = {**ctx.tracking.tags, "retrain.stage": ctx.stage, "retrain.cached": "false"}
    with open_run(
        ctx.tracking.experiment_id,
        ctx.stage,
        tags,
        parent_run_id=ctx.tracking.parent_run_id,
        log_system_metrics=False,
    ) as run:
        mlflow.log_dict(ctx.key_material() or {"uncacheable": "input is a database query"}, "cache_key_material.json")
        yield run


def finish(
    ctx: StageContext, run: mlflow.ActiveRun, metrics: dict[str, float] | None = None, **info: Any
) -> dict[str, Any]:
    """The stage's JSON result: output hashes (for restore), metrics and the run that made them."""
    outs = output_manifest(ctx)
    if metrics:
        mlflow.log_metrics(metrics)
    return {
        "stage": ctx.stage,
        "outs": outs,
        "metrics": metrics or {},
        "info": info,
        "mlflow_run_id": run.info.run_id,
        "finished_at": time.time(),
    }
