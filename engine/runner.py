"""Run a stage task with its content-addressed Prefect cache, from a flow or from `retrain stage`.

Cached results are small JSON records (output md5s, metrics); the output files themselves live in
the DVC cache, so a cache hit whose files are missing or changed is restored from there, and re-run
only when the DVC cache no longer holds them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import Task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer

from adapters import dvc_store as dvcstore
from engine.context import CACHE_DIR, StageContext
from engine.stage import Stage
from retrain.config import stable_hash

logger = logging.getLogger(__name__)


SEAL = "digest"
"""Key of a stage result's own hash: a cache record edited or damaged after it was written fails the check."""


def seal(result: dict[str, Any]) -> dict[str, Any]:
    """The result with a hash of its content, checked before a cached record is trusted."""
    body = {k: v for k, v in result.items() if k != SEAL}
    return body | {SEAL: stable_hash(body)}


def record_problem(stage: Stage, result: Any) -> str | None:
    """Why a cached result cannot be trusted (edited, truncated, or not covering the declared outputs), or None."""
    if not isinstance(result, dict) or not isinstance(result.get("outs"), dict):
        return "the record is not a stage result"
    if result.get(SEAL) != stable_hash({k: v for k, v in result.items() if k != SEAL}):
        return "the record's content does not match its digest (edited or damaged)"
    outs = result["outs"]
    missing = [o for o in stage.outs if o not in outs and not any(rel.startswith(o.rstrip("/") + "/") for rel in outs)]
    if missing:
        return f"the record lists no file for declared outputs {missing}"
    return None


@functools.cache
def _task(name: str, run: Callable[[StageContext], dict[str, Any]]) -> Task[..., dict[str, Any]]:
    """A Prefect task named like the stage, returning the sealed result of the stage body."""

    def run_stage(ctx: StageContext) -> dict[str, Any]:
        """Run the stage body (reached only on a cache miss) and seal its result."""
        return seal(run(ctx))

    # Prefect keys a task on its function's name and code: one name per stage keeps the task keys apart
    run_stage.__name__ = run_stage.__qualname__ = f"{name}_stage"
    return Task(run_stage, name=name)


def stage_task(stage: Stage) -> Task[..., dict[str, Any]]:
    """The stage as a Prefect task (one per stage, reused across runs in a process)."""
    return _task(stage.name, stage.run)


@dataclass
class StageCachePolicy(CachePolicy):
    """Prefect cache policy whose key is the stage context's content hash.

    `pinned` carries a key the caller already computed (hashing the inputs once per stage run, not twice).
    """

    key: str | None = None
    pinned: bool = False

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        """Key from the `ctx` argument: input data hashes, params values, code, lock, external inputs."""
        if self.pinned:
            return self.key
        ctx: StageContext = inputs["ctx"]
        return ctx.cache_key()


@dataclass
class StageOutcome:
    """What the flow reports per stage."""

    name: str
    status: str
    seconds: float
    result: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    """The stage's cache key (None for promote and for uncacheable inputs)."""


def cache_storage(root: Path) -> Path:
    """Where cached stage results (JSON records) are kept: under the project root."""
    path = root / CACHE_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def configured(stage: Stage, root: Path, key: str | None, refresh: bool = False) -> Task[..., dict[str, Any]]:
    """The stage task with caching on its precomputed content key and JSON results (an uncached stage: neither)."""
    task = stage_task(stage)
    if not stage.cache:
        return task.with_options(cache_policy=NO_CACHE, persist_result=False)
    return task.with_options(
        cache_policy=StageCachePolicy(key=key, pinned=True),
        result_storage=cache_storage(root),
        result_serializer="json",
        persist_result=True,
        refresh_cache=refresh,
    )


def outputs_in_place(ctx: StageContext, result: dict[str, Any]) -> bool:
    """Make the workspace hold exactly the outputs of a cached result, restoring from the DVC cache.

    The record must be intact (its digest) and cover every declared output; a restored file comes only from
    a DVC cache object whose content still hashes to the recorded md5 (a corrupted object is removed).
    False means: re-run the stage.
    """
    problem = record_problem(ctx.definition, result)
    if problem is not None:
        logger.warning("stage %s: cached result not trusted (%s); re-running", ctx.stage, problem)
        return False
    for rel, md5 in result["outs"].items():
        path = ctx.path(rel)
        if path.is_file() and dvcstore.file_md5(path) == md5:
            continue
        if not dvcstore.restore(ctx.root, md5, path):
            logger.warning(
                "stage %s: cached output %s is gone from the DVC cache or corrupted; re-running", ctx.stage, rel
            )
            return False
        logger.info("stage %s: restored %s from the DVC cache", ctx.stage, rel)
    return True


def cache_outputs(ctx: StageContext, result: dict[str, Any]) -> None:
    """Copy a stage's fresh outputs into the DVC cache, so a later cache hit can restore them."""
    for rel, md5 in result.get("outs", {}).items():
        dvcstore.add_to_cache(ctx.root, ctx.path(rel), md5)


def log_cached_run(ctx: StageContext, result: dict[str, Any]) -> None:
    """A child run for a cached stage, pointing at the run that produced the result."""
    client = MlflowClient(ctx.tracking.tracking_uri)
    tags = {
        **ctx.tracking.tags,
        "mlflow.runName": ctx.stage,
        "retrain.stage": ctx.stage,
        "retrain.cached": "true",
        "retrain.source_run_id": str(result.get("mlflow_run_id")),
    }
    if ctx.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = ctx.tracking.parent_run_id
    run = client.create_run(ctx.tracking.experiment_id, run_name=ctx.stage, tags=tags)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in result.get("metrics", {}).items()]
    if metrics:
        client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id)


def run_in_flow(ctx: StageContext) -> StageOutcome:
    """Run one stage as a Prefect task inside the flow; report whether it ran or came from cache."""
    started = time.perf_counter()
    stage = ctx.definition
    key = ctx.cache_key() if stage.cache else None  # a stage never changes its own inputs
    state = configured(stage, ctx.root, key)(ctx, return_state=True)
    cached = state.name == "Cached"
    try:
        result = state.result()
    except Exception as exc:  # a cache record that no longer parses: the stage runs again
        if not cached:
            raise
        logger.warning("stage %s: cached result unreadable (%s); re-running", ctx.stage, exc)
        result = {}
    if cached and not outputs_in_place(ctx, result):
        state = configured(stage, ctx.root, key, refresh=True)(ctx, return_state=True)
        result, cached = state.result(), False
    if cached:
        log_cached_run(ctx, result)
    elif stage.cache:
        cache_outputs(ctx, result)
    return StageOutcome(ctx.stage, "cached" if cached else "ran", time.perf_counter() - started, result, key)


def run_standalone(ctx: StageContext) -> StageOutcome:
    """Run a stage without a flow (for `dvc repro`) and share its result with the Prefect cache."""
    started = time.perf_counter()
    result = seal(ctx.definition.run(ctx))
    if ctx.definition.cache:
        cache_outputs(ctx, result)
        key = ctx.cache_key()
        if key is not None:
            store = ResultStore(
                result_storage=LocalFileSystem(basepath=str(cache_storage(ctx.root))), serializer=JSONSerializer()
            )
            store.write(obj=result, key=key)
    return StageOutcome(ctx.stage, "ran", time.perf_counter() - started, result)


def start_parent_run(tracking_uri: str, experiment_id: str, tags: dict[str, str], name: str) -> str:
    """The parent MLflow run of one pipeline run."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, run_name=name, tags={**tags, "mlflow.runName": name})
    return run.info.run_id


def end_parent_run(tracking_uri: str, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """Close the parent run with its final status and summary tags."""
    client = MlflowClient(tracking_uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


def set_parent_tag(tracking_uri: str, run_id: str, key: str, value: str) -> None:
    """Add a tag to the parent run once it is known (the data hash, after ingest)."""
    MlflowClient(tracking_uri).set_tag(run_id, key, value)
