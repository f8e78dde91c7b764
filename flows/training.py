"""The training flow: the DAG of DESIGN.md, top to bottom, with a typed request the Prefect UI renders as a form."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import BaseModel, ConfigDict, Field

from engine import noop
from flows import env, outcome
from retrain.config import Params
from retrain.data.preflight import preflight
from retrain.errors import ConfigError
from retrain.paths import project_root, resolve

if TYPE_CHECKING:  # MLflow, the stages and their libraries load inside the flow, after the no-op check: a
    from engine.pipeline import PipelineRun  # recorded no-op (a scheduled run, nothing changed) never pays for them

logger = logging.getLogger(__name__)

DEFAULT_PARAMS = "params.yaml"

Trigger = Literal["cli", "ui", "schedule", "dvc"]
"""Who started a run; recorded as the MLflow tag `retrain.trigger` and in the promotion audit."""


class RunRequest(BaseModel):
    """What one run may override, typed so the Prefect UI shows a form; empty fields keep the params file's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params_file: str = Field(DEFAULT_PARAMS, description="params file, relative to the project root")
    source: str | None = Field(None, description="ingest.source: a CSV/Parquet path, a glob, or a SQLAlchemy URL")
    sample_rows: int | None = Field(None, gt=0, description="ingest.sample_rows: train on a seeded sample")
    n_trials: int | None = Field(None, ge=1, description="candidates.n_trials: Optuna trials per family")
    timeout_seconds: dict[str, float] = Field(
        default_factory=dict,
        # no <family> here: the UI renders descriptions as Markdown/HTML and drops it as an unknown tag
        description='`candidates.FAMILY.timeout_seconds` per candidate family, e.g. {"lightgbm": 300}',
    )
    baseline_margin: float | None = Field(None, description="evaluate.gates.baseline.margin over the best baseline")
    champion_tolerance: float | None = Field(
        None, ge=0.0, description="evaluate.gates.champion.tolerance: how much worse than champion is tolerated"
    )
    metric_min: dict[str, float] = Field(
        default_factory=dict,
        description='evaluate.gates.metric_bounds.min per metric, e.g. {"roc_auc": 0.9}; other metrics unchanged',
    )
    overrides: list[str] = Field(
        default_factory=list, description="any other params key, as `section.key=value` (like `retrain run --set`)"
    )
    dry_run: bool = Field(False, description="run every stage and gate, report what promote would do, change nothing")

    def to_overrides(self) -> list[str]:
        """The request as `--set` overrides (fields first, then the free-form ones, which win on conflict)."""
        keyed: list[tuple[str, Any]] = [
            ("ingest.source", self.source),
            ("ingest.sample_rows", self.sample_rows),
            ("candidates.n_trials", self.n_trials),
            *((f"candidates.{family}.timeout_seconds", s) for family, s in sorted(self.timeout_seconds.items())),
            ("evaluate.gates.baseline.margin", self.baseline_margin),
            ("evaluate.gates.champion.tolerance", self.champion_tolerance),
            *((f"evaluate.gates.metric_bounds.min.{m}", v) for m, v in sorted(self.metric_min.items())),
        ]
        # JSON scalars are YAML, so `parse_override` reads back exactly these values (a path stays a string)
        return [f"{key}={json.dumps(value)}" for key, value in keyed if value is not None] + list(self.overrides)


DEFAULT_REQUEST = RunRequest()

STOPPED: list[dict[str, Any]] = []
"""The summary so far of the last flow run of this process stopped by a signal (or a cancel), with the stage it
was in: `retrain run --json` prints it (flows/cli.py); the flow's exception carries no result to read it from."""


def reached(run: PipelineRun) -> str | None:
    """The stage a stopped run was in: the first of the DAG it had not finished (None once all had)."""
    from flows.dag import DAG

    done = {s.name for s in run.stages}
    return next((stage.name for stage in DAG if stage.name not in done), None)


def checked_params(root: Path, params_file: str, overrides: list[str]) -> Params:
    """The params after the preflight (retrain/data/preflight.py): a run from the UI gets every problem at once too."""
    report = preflight(resolve(root, params_file), root, overrides)
    if not report.ok or report.params is None:
        raise ConfigError(report.message(params_file))
    return report.params


@flow(name="retrain", log_prints=False, validate_parameters=True)
def retrain_flow(request: RunRequest = DEFAULT_REQUEST, trigger: Trigger = "cli") -> State[dict[str, Any]]:
    """Version, validate, split, train, gate and promote (or, with dry_run, report what promote would do).

    `trigger` is a parameter of its own, not a request field: Prefect merges a deployment's parameters with a
    run's by top-level key, so a deployment pins `trigger` while the form replaces the whole request.
    The final state is named after the decision (Promoted, Kept, Rejected, DryRun; Refused is Failed) with the
    run summary as its result, and the run leaves the Markdown artifact `retrain-outcome` (flows/outcome.py).
    """
    env.log_info()
    env.harden()  # a worker's or `serve`'s flow-run process never passed through the CLI's env.apply()
    root = project_root()
    overrides = request.to_overrides()
    dry_run = request.dry_run
    is_default = not overrides and resolve(root, request.params_file) == root / DEFAULT_PARAMS
    if trigger == "schedule" and is_default and not dry_run:  # a recorded no-op: no stage, no MLflow run
        verdict = noop.decide(root, DEFAULT_PARAMS)
        if verdict.unchanged:
            logger.info("nothing changed since the last run (%.2fs): %s", verdict.seconds, verdict.reason)
            summary = verdict.summary | {"prefect_flow_run_id": flow_run.get_id()}
            return outcome.publish_unchanged(summary, verdict.reason)
        logger.info("running: %s", verdict.reason)
    from engine.pipeline import PipelineRun
    from flows.dag import DAG, sync_dvc_yaml
    from flows.summary import run_summary, summary_tags
    from tasks import baselines, candidates, evaluate, ingest, promote, split, validate, version

    params = checked_params(root, request.params_file, overrides)
    logger.info("run requested by %s with overrides %s", trigger, overrides or "(none)")
    run = PipelineRun.start(
        root,
        params,
        DAG,
        trigger,
        commit_lineage=is_default and not dry_run,
        flow_run_id=flow_run.get_id(),
        dry_run=dry_run,
    )
    try:
        # --- data: snapshot, version, gate, split ---
        run.stage(ingest.STAGE)
        run.stage(version.STAGE)
        run.stage(validate.STAGE)
        run.stage(split.STAGE)
        # --- models: reference points and tuned candidates ---
        run.stage(baselines.STAGE)
        run.stage(candidates.STAGE)
        # --- offline gates and promotion ---
        run.stage(evaluate.STAGE)
        run.stage(promote.STAGE)
        if run.commit_lineage:
            sync_dvc_yaml(root, params)  # dvc.lock can only be committed against the dvc.yaml of these params
        run.record_lineage()
    except BaseException as exc:
        close_failed(run, exc)
        raise
    summary = run_summary(run)
    if run.commit_lineage:
        noop.write_stamp(root, summary)  # what the next run's no-op check compares with (engine/noop.py)
    run.finish("FINISHED", summary_tags(summary))
    outcome.publish(run, summary)
    return outcome.final_state(summary)


def close_failed(run: PipelineRun, exc: BaseException) -> None:
    """End a run that raised: parent run FAILED (an error) or KILLED (a signal, a cancel), lock released, outcome.

    Never raises over `exc`, the error the operator must see: a tracking server that is down gets one attempt
    per call (adapters/mlflow_errors.py `fail_fast_when_down`), and what cannot be closed now the next run's
    recovery closes (engine/recovery.py).
    """
    from adapters.mlflow_errors import fail_fast_when_down
    from adapters.mlflow_runs import end_status
    from flows.summary import run_summary, summary_tags

    with fail_fast_when_down(run.tracking.tracking_uri):
        try:
            partial = run_summary(run)
        except Exception:  # the parent run is closed and the lock released whatever the summary's state
            logger.warning("no summary of the stopped run", exc_info=True)
            partial = {"mlflow_run_id": run.tracking.parent_run_id}
        try:
            run.finish(end_status(exc), summary_tags(partial))  # FAILED on an error, KILLED on a signal or cancel
        except Exception as error:  # the lock is released (finish's finally); the parent run stays for recovery
            logger.warning("parent run %s not closed (%s); the next run closes it", run.tracking.parent_run_id, error)
        if isinstance(exc, Exception):  # not on a cancel or Ctrl-C: then the API may be going away
            outcome.publish_failure(run, exc)  # what is known; never raises over `exc`
        else:
            STOPPED[:] = [partial | {"stage": reached(run)}]  # what `retrain run --json` prints on a signal
