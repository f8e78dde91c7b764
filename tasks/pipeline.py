"""One pipeline run: its MLflow parent run, the stage contexts, lineage and the summary it reports."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from retrain.config import Params, stable_hash
from retrain.families import check_family
from retrain.stages import BASELINES, CANDIDATES, EVALUATED_MODEL, GATE_RECORD, SNAPSHOT
from tasks import dvcstore, recovery, registry
from tasks.runner import StageOutcome, end_parent_run, run_in_flow, set_parent_tag, start_parent_run
from tasks.runtime import (
    StageContext,
    Tracking,
    base_tags,
    default_tracking_uri,
    ensure_experiment,
    read_json,
    tree_md5,
    write_json,
)
from tasks.version import version_tags

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
        trigger: str,
        commit_lineage: bool,
        flow_run_id: str | None,
        dry_run: bool = False,
    ) -> PipelineRun:
        """Take the workspace lock, close what a killed run left RUNNING, then open the tagged MLflow parent run.

        The lock is held until `finish` (or released by the OS if this process dies).
        """
        lock = recovery.acquire(root, trigger, f"flow run {flow_run_id or '-'}")
        try:
            uri = params.tracking.tracking_uri or default_tracking_uri(root)
            experiment_id = ensure_experiment(uri, params.tracking.experiment, root)
            recovered = recovery.recover(uri, experiment_id)
            tags = base_tags(root, params, trigger) | dvcstore.remote_info(root, params.version.remote).tags()
            if flow_run_id:
                tags["retrain.prefect_flow_run_id"] = flow_run_id
            name = f"pipeline-{trigger}" + ("-dry-run" if dry_run else "")
            flags = {"retrain.dry_run": "true"} if dry_run else {}
            parent = start_parent_run(uri, experiment_id, tags | flags | recovery.process_tags(), name=name)
        except BaseException:
            lock.release()
            raise
        tracking = Tracking(uri, experiment_id, parent, tags)
        return cls(root, params, tracking, commit_lineage, dry_run=dry_run, lock=lock, recovered=recovered)

    def context(self, stage: str, external: dict[str, str] | None = None) -> StageContext:
        """The context a stage task receives."""
        return StageContext(stage, self.params, self.root, self.tracking, external or {})

    def stage(self, name: str, external: dict[str, str] | None = None) -> dict[str, Any]:
        """Run (or reuse from cache) one stage and remember how it went."""
        outcome = run_in_flow(self.context(name, external))
        self.stages.append(outcome)
        logger.info("stage %-10s %-6s %6.2fs", name, outcome.status, outcome.seconds)
        if name == "ingest":
            self._tag({"retrain.data_hash": outcome.result["outs"][SNAPSHOT]})
        if name == "version":
            self._tag(version_tags(self.root))
        return outcome.result

    def _tag(self, new: dict[str, str]) -> None:
        """Every later run and the parent carry the lineage known so far (data hash, then the remote holding it)."""
        self.tracking = replace(self.tracking, tags={**self.tracking.tags, **new})
        for key, value in new.items():
            set_parent_tag(self.tracking.tracking_uri, self.tracking.parent_run_id or "", key, value)

    def champion_input(self, candidates: dict[str, Any]) -> dict[str, str]:
        """The champion as an input of `evaluate`'s cache key.

        A champion that is one of these very candidates (the previous run promoted it) counts as no
        other champion, so an unchanged rerun stays a cache hit.
        """
        promote = self.params.promote
        current = registry.champion(self.tracking.tracking_uri, promote.model_name, promote.alias)
        if current is None:
            return {"champion": "none"}
        families = {rel.split("/")[2] for rel in candidates["outs"] if rel.count("/") >= 3}
        own = {tree_md5(self.root / CANDIDATES / f) for f in families}
        shipped = self.root / EVALUATED_MODEL  # what the last evaluate built (candidate + calibration files)
        if shipped.is_dir():
            own.add(tree_md5(shipped))
        return {"champion": "none" if current.get("model_hash") in own else str(current.get("model_hash"))}

    def reference_input(self) -> dict[str, str]:
        """The drift reference (the champion's training-snapshot md5) as an input of `validate`'s cache key."""
        return registry.drift_reference(self.root, self.params, self.tracking.tracking_uri)

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
        if any(s.key is None and s.name != "promote" for s in self.stages):
            return None
        files = {name: dvcstore.file_md5(self.root / name) for name in LINEAGE_FILES if (self.root / name).exists()}
        stages = {s.name: [s.key, s.result.get("outs", {})] for s in self.stages}
        return stable_hash({"files": files, "stages": stages})

    def finish(self, status: str) -> dict[str, Any]:
        """Close the parent run, release the workspace lock and return the machine-readable summary."""
        try:
            summary = self.summary()
            tags = {
                "retrain.decision": str(summary.get("decision")),
                "retrain.promotion": str(summary.get("promotion")),
            }
            end_parent_run(self.tracking.tracking_uri, self.tracking.parent_run_id or "", status, tags)
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        return summary

    def summary(self) -> dict[str, Any]:
        """Stages (cached or ran, seconds), metrics, gates, decision and model version."""
        by_name = {s.name: s.result for s in self.stages}
        evaluate = by_name.get("evaluate", {}).get("info", {})
        promote = by_name.get("promote", {}).get("info", {})
        record_path = self.root / GATE_RECORD
        gates = read_json(record_path)["gates"] if "evaluate" in by_name and record_path.exists() else []
        ran = {"baselines", "candidates"} <= set(by_name)
        families: dict[str, Any] = {}
        if ran and (self.root / CANDIDATES / "summary.json").exists() and (self.root / BASELINES).exists():
            from retrain.baselines import families_vs_baselines  # numpy/pandas/sklearn: not for a cached start

            tuned = read_json(self.root / CANDIDATES / "summary.json")
            families = families_vs_baselines(tuned, read_json(self.root / BASELINES))
            for family, entry in tuned["families"].items():
                families[family] |= {k: entry.get(k) for k in ("cv_score", "n_trials", "n_pruned")}
        return {
            "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3)} for s in self.stages],
            "metrics": {s.name: s.result.get("metrics", {}) for s in self.stages},
            "gates": gates,
            "families": families,
            "family": evaluate.get("family"),
            "decision": evaluate.get("decision"),
            "failed_gates": evaluate.get("failed_gates", []),
            "promotion": promote.get("action"),
            "promotion_message": promote.get("message", ""),
            "dry_run": self.dry_run,
            "model_name": self.params.promote.model_name,
            "model_version": promote.get("version"),
            "challenger_version": promote.get("challenger_version"),
            "champion_version": promote.get("champion_version"),
            "audit": promote.get("audit", []),
            "data_hash": self.tracking.tags.get("retrain.data_hash"),
            "metric": self.params.evaluate.metric,
            "mlflow_run_id": self.tracking.parent_run_id,
            "mlflow_experiment_id": self.tracking.experiment_id,
            "tracking_uri": self.tracking.tracking_uri,
            "prefect_flow_run_id": self.tracking.tags.get("retrain.prefect_flow_run_id"),
            "recovered": self.recovered,
            "seconds": round(time.perf_counter() - self.started, 3),
        }


def preflight(params: Params) -> None:
    """Config problems that pydantic cannot see (a LightGBM objective that contradicts the task) fail at start."""
    for family in params.candidates.families:
        check_family(family, params.dataset.task, getattr(params.candidates, family).fixed)


def standalone_stage(root: Path, params: Params, name: str, trigger: str) -> StageOutcome:
    """Run one stage outside any flow (what `dvc repro` calls) under the workspace lock, as its own MLflow run."""
    with recovery.workspace_lock(root, trigger, f"stage {name}"):
        return _standalone_stage(root, params, name, trigger)


def _standalone_stage(root: Path, params: Params, name: str, trigger: str) -> StageOutcome:
    """`standalone_stage` once the lock is held; closes stale stage runs of killed `retrain stage` processes."""
    from tasks.runner import run_standalone
    from tasks.runtime import output_manifest

    uri = params.tracking.tracking_uri or default_tracking_uri(root)
    tags = base_tags(root, params, trigger) | dvcstore.remote_info(root, params.version.remote).tags()
    snapshot = root / SNAPSHOT
    if snapshot.exists() and name != "ingest":
        tags["retrain.data_hash"] = dvcstore.file_md5(snapshot)
    if name not in ("ingest", "version"):
        tags |= version_tags(root)
    experiment_id = ensure_experiment(uri, params.tracking.experiment, root)
    recovery.recover(uri, experiment_id, prefect=False)
    run = PipelineRun(root, params, Tracking(uri, experiment_id, None, tags), False)
    external: dict[str, str] = {}
    if name == "evaluate":
        external = run.champion_input({"outs": output_manifest(run.context("candidates"))})
    elif name == "validate":
        external = run.reference_input()
    return run_standalone(run.context(name, external))
