"""One pipeline run: its MLflow parent run, the stage contexts, the lineage tags and the dvc.lock commit.

Generic over the stage table: what a stage adds (cache inputs from outside the workspace, lineage tags for
later runs) comes from its record's hooks, never from its name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from filelock import FileLock

from adapters import dvc_store as dvcstore
from adapters.jsonfile import read_json, write_json
from adapters.mlflow_parent import key_params
from adapters.mlflow_store import default_tracking_uri
from engine import recovery
from engine.context import (
    StageContext,
    Tracking,
    base_tags,
    ensure_experiment,
)
from engine.runner import (
    StageOutcome,
    dvc_parent_run,
    end_parent_run,
    report_parent,
    run_in_flow,
    run_standalone,
    set_parent_tag,
    stage_in_parent,
    start_parent_run,
)
from engine.stage import Stage, check_dag, upstream
from retrain.config import Params, stable_hash

logger = logging.getLogger(__name__)

LINEAGE_STAMP = ".retrain/lineage.json"
"""The fingerprint of the stages and files behind the last dvc.lock the flow wrote."""
LINEAGE_FILES = ("dvc.yaml", "dvc.lock", "params.yaml")


@dataclass
class PipelineRun:
    """State of one run of the DAG, shared by the stages it launches."""

    root: Path
    params: Params
    tracking: Tracking
    commit_lineage: bool
    dag: tuple[Stage, ...] = ()
    stages: list[StageOutcome] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    dry_run: bool = False
    lock: FileLock | None = None
    recovered: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        root: Path,
        params: Params,
        dag: Sequence[Stage],
        trigger: str,
        commit_lineage: bool,
        flow_run_id: str | None,
        dry_run: bool = False,
    ) -> PipelineRun:
        """Take the workspace lock, close what a killed run left RUNNING, then open the tagged MLflow parent run.

        The lock is held until `finish` (or released by the OS if this process dies).
        """
        check_dag(dag)
        waiting = recovery.flow_run_waiting(flow_run_id) if flow_run_id else None  # state AwaitingLock while blocked
        lock = recovery.acquire(root, trigger, f"flow run {flow_run_id or '-'}", on_wait=waiting)
        try:
            uri = params.tracking.tracking_uri or default_tracking_uri(root)
            experiment_id = ensure_experiment(uri, params.tracking.experiment, root)
            recovered = recovery.recover(uri, experiment_id)
            tags = base_tags(root, params, trigger) | dvcstore.remote_info(root, params.version.remote).tags()
            if flow_run_id:
                tags["retrain.prefect_flow_run_id"] = flow_run_id
            name = f"pipeline-{trigger}" + ("-dry-run" if dry_run else "")
            flags = {"retrain.dry_run": "true"} if dry_run else {}
            owner = recovery.process_tags()
            parent = start_parent_run(uri, experiment_id, tags | flags | owner, name=name, params=key_params(params))
        except BaseException:
            lock.release()
            raise
        tracking = Tracking(uri, experiment_id, parent, tags)
        return cls(root, params, tracking, commit_lineage, tuple(dag), dry_run=dry_run, lock=lock, recovered=recovered)

    def context(self, stage: Stage) -> StageContext:
        """The context a stage receives, its outside-the-workspace cache inputs filled by its `key_inputs` hook."""
        ctx = StageContext(stage, self.params, self.root, self.tracking, dry_run=self.dry_run)
        if stage.key_inputs is None:
            return ctx
        return replace(ctx, external=stage.key_inputs(ctx))

    def stage(self, stage: Stage) -> StageOutcome:
        """Run (or reuse from cache) one stage, remember how it went, and pass its lineage tags on."""
        outcome = run_in_flow(self.context(stage))
        self.stages.append(outcome)
        logger.info("stage %-10s %-6s %6.2fs", stage.name, outcome.status, outcome.seconds)
        if stage.tags is not None:
            self._tag(stage.tags(self.root, outcome.result.get("outs")))
        return outcome

    def _tag(self, new: Mapping[str, str]) -> None:
        """Every later run and the parent carry the lineage known so far (data hash, then the remote holding it)."""
        self.tracking = replace(self.tracking, tags={**self.tracking.tags, **new})
        for key, value in new.items():
            set_parent_tag(self.tracking.tracking_uri, self.tracking.parent_run_id or "", key, value)

    def record_lineage(self) -> None:
        """Write dvc.lock from the workspace so `dvc status` agrees (skipped for override runs).

        Skipped as well when this run's stage keys and outputs are those the last commit recorded and dvc.lock
        is the file it left: then DVC would write the same lock (its commit costs seconds on a cached rerun).
        """
        if not self.commit_lineage:
            reason = "dry run: nothing was promoted" if self.dry_run else "the workspace is an experiment"
            logger.info("overrides or dry run in effect: dvc.lock left as is (%s)", reason)
            return
        from dvc.lock import LockError

        stamp = self.root / LINEAGE_STAMP
        fingerprint = self.lineage_fingerprint()
        if fingerprint is not None and stamp.exists() and read_json(stamp) == {"fingerprint": fingerprint}:
            logger.info("dvc.lock already records these stage inputs and outputs: not rewritten")
            return
        try:
            dvcstore.commit_pipeline(self.root)
        except LockError as exc:
            # a `dvc repro` holds DVC's repo lock and waits for our workspace lock: it writes dvc.lock itself
            logger.warning("dvc.lock left as is: DVC's repo lock is held (a `dvc repro` is waiting): %s", exc)
            return
        if fingerprint is not None:
            write_json(stamp, {"fingerprint": self.lineage_fingerprint()})  # dvc.lock changed: hash it again

    def lineage_fingerprint(self) -> str | None:
        """What dvc.lock is a function of: every stage's key (inputs, params, code) and outputs, and the files."""
        cached = {s.name for s in self.dag if s.cache}
        if any(s.key is None and s.name in cached for s in self.stages):
            return None
        files = {name: dvcstore.file_md5(self.root / name) for name in LINEAGE_FILES if (self.root / name).exists()}
        stages = {s.name: [s.key, s.result.get("outs", {})] for s in self.stages}
        return stable_hash({"files": files, "stages": stages})

    def finish(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        """Close the parent run with its summary tags and release the workspace lock."""
        try:
            report_parent(self.tracking, self.root, self.params, self.stages, time.perf_counter() - self.started)
            end_parent_run(self.tracking.tracking_uri, self.tracking.parent_run_id or "", status, dict(tags or {}))
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None


def standalone_stage(root: Path, params: Params, dag: Sequence[Stage], stage: Stage, trigger: str) -> StageOutcome:
    """Run one stage outside any flow (what `dvc repro` calls) under the workspace lock, as its own MLflow run."""
    with recovery.workspace_lock(root, trigger, f"stage {stage.name}"):
        return _standalone_stage(root, params, dag, stage, trigger)


def _standalone_stage(root: Path, params: Params, dag: Sequence[Stage], stage: Stage, trigger: str) -> StageOutcome:
    """`standalone_stage` once the lock is held; closes stale stage runs of killed `retrain stage` processes.

    The lineage tags of the stages before it are read from their outputs on disk (no flow passed them on).
    """
    uri = params.tracking.tracking_uri or default_tracking_uri(root)
    tags = base_tags(root, params, trigger) | dvcstore.remote_info(root, params.version.remote).tags()
    for before in upstream(dag, stage):
        if before.tags is not None:
            tags |= before.tags(root, None)
    experiment_id = ensure_experiment(uri, params.tracking.experiment, root)
    recovery.recover(uri, experiment_id, prefect=False)
    parent = dvc_parent_run(uri, experiment_id, tags, key_params(params))  # the stages of one dvc repro share it
    run = PipelineRun(root, params, Tracking(uri, experiment_id, parent, tags), False, tuple(dag))
    return stage_in_parent(run.context(stage)) if parent else run_standalone(run.context(stage))
