"""Run a stage task with its content-addressed Prefect cache, from a flow or from `retrain stage`.

Cached results are small JSON records (output md5s, metrics); the output files themselves live in
the DVC cache, so a cache hit whose files are missing or changed is restored from there, and re-run
only when the DVC cache no longer holds them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import Task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer

from adapters import dvc_store as dvcstore
from adapters.jsonfile import read_json
from adapters.mlflow_parent import headline_metrics, log_parent, outcome_tags, training_input
from adapters.mlflow_runs import create_run, end_status
from engine.context import CACHE_DIR, StageContext, Tracking
from engine.recovery import HOST_TAG, PID_TAG, STARTED_TAG
from engine.stage import Stage
from retrain.catalog import GATE_RECORD, SNAPSHOT
from retrain.config import Params, stable_hash

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
    missing = [o for o in stage.files if o not in outs and not any(rel.startswith(o.rstrip("/") + "/") for rel in outs)]
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
    run = create_run(client, ctx.tracking.experiment_id, ctx.stage, tags)  # owner-tagged: a kill here is recovered
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


def start_parent_run(
    tracking_uri: str, experiment_id: str, tags: dict[str, str], name: str, params: Mapping[str, str] | None = None
) -> str:
    """The parent MLflow run of one pipeline run, with its key params (adapters/mlflow_parent.py `key_params`).

    Tagged with this process as its owner (recovery), unless `tags` name another (the dvc parent: the dvc process).
    """
    client = MlflowClient(tracking_uri)
    run = create_run(client, experiment_id, name, tags)
    if params:
        log_parent(client, run.info.run_id, {}, {}, params)
    return run.info.run_id


def report_parent(
    tracking: Tracking, root: Path, params: Params, stages: Sequence[StageOutcome], seconds: float | None = None
) -> None:
    """Put what is known so far on the parent run: headline metrics, decision, model version, training dataset.

    The gate record is read only when one of `stages` wrote it (a stale file from an earlier run never counts);
    the promotion outcome is the `action` a stage reported. `seconds` None: wall time since the parent started.
    A reporting failure is logged, never raised: the pipeline's outcome does not depend on it.
    """
    run_id = tracking.parent_run_id
    if not run_id:
        return
    client = MlflowClient(tracking.tracking_uri)
    try:
        wrote_record = any(GATE_RECORD in s.result.get("outs", {}) for s in stages)
        record = read_json(root / GATE_RECORD) if wrote_record and (root / GATE_RECORD).exists() else None
        promotion = next((s.result["info"] for s in reversed(stages) if "action" in s.result.get("info", {})), None)
        now_ms = int(time.time() * 1000)
        if seconds is None:
            seconds = (now_ms - client.get_run(run_id).info.start_time) / 1000
        metrics = (headline_metrics(record) if record else {}) | {"wall_seconds": round(seconds, 3)}
        data_hash = tracking.tags.get("retrain.data_hash")
        remote = tracking.tags.get("retrain.dvc_remote_url")
        dataset = training_input(params.dataset.name, data_hash, remote, root / SNAPSHOT) if data_hash else None
        log_parent(client, run_id, metrics, outcome_tags(record, promotion), dataset=dataset, timestamp_ms=now_ms)
    except (MlflowException, OSError, ValueError) as exc:
        logger.warning("parent run %s: headline metrics / dataset not logged: %s", run_id, exc)


def end_parent_run(tracking_uri: str, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """Close the parent run with its final status and summary tags."""
    client = MlflowClient(tracking_uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status=status)


def set_parent_tag(tracking_uri: str, run_id: str, key: str, value: str) -> None:
    """Add a tag to the parent run once it is known (the data hash, after ingest)."""
    MlflowClient(tracking_uri).set_tag(run_id, key, value)


INVOCATION_TAG = "retrain.dvc_invocation"
"""Tag naming the `dvc repro` / `dvc exp run` process whose stages share one parent run."""
EXP_NAME_ENV = "DVC_EXP_NAME"


def dvc_process(start: psutil.Process | None = None) -> psutil.Process | None:
    """The nearest `dvc` process above this one (`dvc repro`, `dvc exp run`, a queue worker), if DVC started us.

    DVC sets $DVC_STAGE for every stage command; without it (a `retrain stage` typed by hand) there is none.
    `start` is the process to walk up from (this one by default).
    """
    if not os.environ.get("DVC_STAGE"):
        return None
    try:
        for proc in (start or psutil.Process()).parents():
            head = proc.cmdline()[:3]
            if any(Path(arg).name == "dvc" for arg in head):
                return proc
    except psutil.Error as exc:
        logger.warning("cannot walk to the dvc process (%s): this stage gets no parent run", exc)
    return None


def dvc_invocation(proc: psutil.Process) -> dict[str, str]:
    """Tags identifying one dvc invocation: its key, plus recovery's owner tags naming the dvc process, so
    engine/recovery.py closes the parent FAILED once that process is gone (dvc killed mid-repro)."""
    started = f"{proc.create_time():.2f}"
    key = f"{socket.gethostname()}:{proc.pid}:{started}"
    exp = os.environ.get(EXP_NAME_ENV, "")
    tags = {INVOCATION_TAG: f"{key}:{exp}" if exp else key}
    if exp:
        tags["retrain.dvc_exp_name"] = exp
    return tags | {PID_TAG: str(proc.pid), HOST_TAG: socket.gethostname(), STARTED_TAG: started}


def dvc_parent_run(
    tracking_uri: str, experiment_id: str, tags: dict[str, str], params: Mapping[str, str]
) -> str | None:
    """The parent run shared by the stages of one `dvc repro` / `dvc exp run`: None outside dvc.

    The first stage that runs creates it (`pipeline-dvc`, `pipeline-dvc-exp-<name>`); later stages find it by
    its invocation tag and set it RUNNING again (each stage closes it: `stage_in_parent`).
    """
    proc = dvc_process()
    if proc is None:
        return None
    invocation = dvc_invocation(proc)
    client = MlflowClient(tracking_uri)
    key = invocation[INVOCATION_TAG].replace("'", "")
    found = client.search_runs([experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        log_parent(client, run_id, {}, tags)  # lineage known by now (the data hash once version ran)
        return run_id
    exp = invocation.get("retrain.dvc_exp_name")
    name = f"pipeline-{tags.get('retrain.trigger', 'dvc')}" + (f"-exp-{exp}" if exp else "")
    run_id = start_parent_run(tracking_uri, experiment_id, tags | invocation, name, params)
    logger.info("MLflow parent run %s (%s) for dvc pid %s", run_id, name, proc.pid)
    return run_id


def stage_in_parent(ctx: StageContext) -> StageOutcome:
    """Run a `dvc repro` stage under its shared parent, then update the parent and close it (FINISHED; FAILED
    when the stage raised, KILLED when the process was stopped); the next stage of the same invocation reopens it."""
    uri, parent = ctx.tracking.tracking_uri, ctx.tracking.parent_run_id or ""
    try:
        outcome = run_standalone(ctx)
    except BaseException as exc:
        report_parent(ctx.tracking, ctx.root, ctx.params, [])
        end_parent_run(uri, parent, end_status(exc))
        raise
    report_parent(ctx.tracking, ctx.root, ctx.params, [outcome])
    end_parent_run(uri, parent, "FINISHED")
    return outcome
