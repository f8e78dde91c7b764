"""The one way the pipeline opens an MLflow run: tagged with its owner process, ended with a status that says why.

Every run carries `retrain.pid`, `retrain.host` and `retrain.process_started`, so engine/recovery.py can close
it if its process dies without ending it (SIGKILL, the OOM killer, a reboot). A run ends FINISHED when its block
completes, FAILED when the code raised an error (`Exception`), and KILLED when the process was stopped from
outside (a signal turned into KeyboardInterrupt / `TerminationSignal`, a cancel, an exit: any other
`BaseException`). Nothing else in the project calls `mlflow.start_run` or `MlflowClient.create_run`
(tests/unit/test_mlflow_runs.py checks that). See docs/concurrency.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping

import mlflow
import psutil
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

PID_TAG, HOST_TAG, STARTED_TAG = "retrain.pid", "retrain.host", "retrain.process_started"
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


def process_tags() -> dict[str, str]:
    """Whose run this is: pid, host and process start time (so a reused pid is not mistaken for the owner)."""
    return {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        STARTED_TAG: f"{psutil.Process().create_time():.2f}",
    }


def end_status(exc: BaseException | None) -> str:
    """FINISHED without an exception, FAILED for an error of the code, KILLED when the process is being stopped."""
    if exc is None:
        return FINISHED
    return FAILED if isinstance(exc, Exception) else KILLED


def owned(tags: Mapping[str, str]) -> dict[str, str]:
    """`tags` with this process's owner tags added (owner tags already in `tags` win: the dvc parent's)."""
    return {**process_tags(), **tags}


def create_run(
    client: MlflowClient, experiment_id: str, name: str, tags: Mapping[str, str], start_time: int | None = None
) -> Run:
    """A RUNNING run made through the client (parent runs, cached-stage and audit runs), owner-tagged."""
    return client.create_run(
        experiment_id, start_time=start_time, run_name=name, tags=owned({**tags, "mlflow.runName": name})
    )


@contextlib.contextmanager
def open_run(
    experiment_id: str,
    name: str,
    tags: Mapping[str, str],
    *,
    parent_run_id: str | None = None,
    nested: bool = False,
    log_system_metrics: bool | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """The active (fluent) run of a block: owner-tagged, ended by this block with `end_status` of how it left.

    The run is created first, then made active: `mlflow.start_run` alone creates the run and only then starts the
    system-metrics sampler (slow on a busy machine), so a SIGTERM in between would leave a RUNNING run nobody
    ends. Here any stop from the moment the run exists ends it.
    """
    run_id = None
    try:
        run_id = _new_run(experiment_id, name, tags, parent_run_id=parent_run_id, nested=nested)
        active = mlflow.start_run(
            run_id=run_id, nested=mlflow.active_run() is not None, log_system_metrics=log_system_metrics
        )
    except BaseException as exc:
        if run_id is not None:
            _end_quietly(run_id, end_status(exc))
        raise
    try:
        yield active
    except BaseException as exc:
        _end_quietly(active.info.run_id, end_status(exc))
        raise
    close(active.info.run_id, FINISHED)


def _new_run(experiment_id: str, name: str, tags: Mapping[str, str], *, parent_run_id: str | None, nested: bool) -> str:
    """Create the run as `mlflow.start_run` would (its context tags: user, source, git), owner-tagged; its id."""
    from mlflow.tracking.context import registry as context_registry
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if nested and active is not None else None)
    user = owned(tags) | {MLFLOW_RUN_NAME: name} | ({MLFLOW_PARENT_RUN_ID: parent} if parent else {})
    run = MlflowClient().create_run(experiment_id, tags=context_registry.resolve_tags(user), run_name=name)
    return run.info.run_id


def _end_quietly(run_id: str, status: str) -> None:
    """End a run while an exception unwinds: never raise over it (recovery closes the run later if this fails).

    A tracking server that is down gets one attempt, not MLflow's minutes of retries (`fail_fast_when_down`).
    """
    from adapters.mlflow_errors import fail_fast_when_down

    try:
        with fail_fast_when_down(mlflow.get_tracking_uri()):
            close(run_id, status)
    except Exception:
        logger.warning("MLflow run %s could not be ended %s (recovery closes it later)", run_id, status)


def close(run_id: str, status: str) -> None:
    """End run `run_id`: the active run, or through the client when a block inside left another run active."""
    current = mlflow.active_run()
    if current is not None and current.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        MlflowClient().set_terminated(run_id, status=status)
    if status != FINISHED:
        logger.info("MLflow run %s ended %s", run_id, status)
