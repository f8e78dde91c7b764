"""Safe concurrency and crash recovery on one workspace: the workspace lock, and cleanup after a killed run.

Lock order: `.retrain/workspace.lock` (whole flow run, or one `retrain stage`) is taken first; inside it, one
at a time, the MLflow store's init lock (first touch of the store in a process: adapters/mlflow_store.py) and
the registry lock (promote, rollback: adapters/registry_lock.py, keyed on the store, not the workspace);
never the reverse, and never one of those two inside the other. See docs/concurrency.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from adapters.mlflow_runs import HOST_TAG as HOST_TAG  # the owner tags live with the code that opens runs
from adapters.mlflow_runs import KILLED
from adapters.mlflow_runs import PID_TAG as PID_TAG
from adapters.mlflow_runs import STARTED_TAG as STARTED_TAG
from adapters.mlflow_runs import process_tags as process_tags

logger = logging.getLogger(__name__)

WORKSPACE_LOCK = ".retrain/workspace.lock"
HOLDER_FILE = ".retrain/workspace.lock.json"
TIMEOUT_ENV = "RETRAIN_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 2 * 3600.0
POLL_SECONDS = 2.0
RECOVERED_TAG = "retrain.recovered"
FLOW_RUN_TAG = "retrain.prefect_flow_run_id"
AWAITING_LOCK = "AwaitingLock"
"""Name of the Running state a flow run shows while it waits for the workspace lock (docs/operations.md)."""

LockWait = Callable[[str | None], None]
"""Told while `acquire` waits: the holder as one line (again when the holder changes), then None once acquired."""


class WorkspaceBusyError(RuntimeError):
    """Another run held the workspace lock for longer than the configured wait (exit code 1)."""


def lock_timeout() -> float:
    """Seconds to wait for the workspace lock: $RETRAIN_LOCK_TIMEOUT, else 2 h (a schedule must not hang forever)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError as exc:
        raise WorkspaceBusyError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc
    return value if value >= 0 else DEFAULT_TIMEOUT


def holder(root: Path) -> dict[str, Any]:
    """Who holds (or last held) the workspace lock: pid, host, trigger, since; {} when unknown."""
    try:
        return json.loads((root / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def describe(info: dict[str, Any]) -> str:
    """The holder as one log line."""
    if not info:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("since", 0))))
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('trigger')}: {info.get('what')}) since {since}"


@contextlib.contextmanager
def workspace_lock(root: Path, trigger: str, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the workspace lock (DVC workspace + registry) for a whole run; wait for a holder, logging who it is."""
    handle = acquire(root, trigger, what, timeout)
    try:
        yield
    finally:
        handle.release()


def acquire(
    root: Path, trigger: str, what: str, timeout: float | None = None, on_wait: LockWait | None = None
) -> FileLock:
    """Take the workspace lock (the OS releases it if the holder dies); WorkspaceBusyError after `timeout`.

    `on_wait` hears who holds the lock while this waits, and None once it is taken (never when it was free).
    """
    path = root / WORKSPACE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False)
    limit = lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + limit
    announced: dict[str, Any] | None = None
    while True:
        try:
            lock.acquire(timeout=min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
            break
        except Timeout:
            current = holder(root)
            if current != announced:
                logger.warning("workspace lock %s is held by %s; waiting (up to %gs)", path, describe(current), limit)
                announced = current
                _tell(on_wait, describe(current))
            if time.monotonic() >= deadline:
                raise WorkspaceBusyError(
                    f"workspace lock {path} still held by {describe(current)} after {limit:g}s "
                    f"(raise {TIMEOUT_ENV} or wait for that run to finish)"
                ) from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "trigger": trigger, "what": what, "since": time.time()}
    tmp = root / (HOLDER_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(root / HOLDER_FILE)
    if announced is not None:
        logger.info("workspace lock acquired after waiting")
        _tell(on_wait, None)
    return lock


def _tell(on_wait: LockWait | None, holder_line: str | None) -> None:
    """Call the waiting hook; a failing hook is logged, never allowed to break or release the lock."""
    if on_wait is None:
        return
    try:
        on_wait(holder_line)
    except Exception:
        logger.warning("the workspace-lock wait hook failed", exc_info=True)


def flow_run_waiting(flow_run_id: str) -> LockWait:
    """A LockWait that shows the wait in the Prefect flow run's state: Running `AwaitingLock` naming the holder,
    then a plain Running once the lock is taken.

    Proposed through orchestration (not forced): a run cancelled while it waits is not put back to Running.
    """
    from uuid import UUID

    def show(holder_line: str | None) -> None:
        """Propose the state for this moment of the wait."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.states import Running

        if holder_line is None:
            state = Running(message="workspace lock acquired")
        else:
            state = Running(name=AWAITING_LOCK, message=f"waiting for the workspace lock held by {holder_line}")
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(UUID(flow_run_id)).state
            if current is not None and current.type != StateType.RUNNING:
                logger.info("flow run %s is %s: its state is left as is", flow_run_id, current.name)
                return
            result = client.set_flow_run_state(UUID(flow_run_id), state)
        if result.status.value != "ACCEPT":
            logger.warning("Prefect refused state %s for flow run %s: %s", state.name, flow_run_id, result.details)

    return show


def owner_alive(tags: dict[str, str]) -> bool | None:
    """Is the process that started a run still alive? None when unknown (no pid tags, or another host)."""
    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(tags[PID_TAG]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = tags.get(STARTED_TAG)
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False


def recover(tracking_uri: str, experiment_id: str, prefect: bool = True) -> dict[str, list[str]]:
    """Close what dead processes left RUNNING: MLflow runs -> KILLED, their Prefect flow runs -> CRASHED.

    Every experiment of the store is searched (`experiment_id`, the run's own, first): the audit experiment and
    an experiment a killed run used under other params hold runs of this pipeline too. A run's owner is its own
    `retrain.pid`/`retrain.host` tags, or those of the nearest ancestor run that has them (a nested run opened
    without them). Only runs owned by a process on this host that is no longer alive are touched; call it while
    holding the workspace lock. With prefect=False (`retrain stage`, no Prefect backend) runs that belong to a
    flow run are left for the next flow run. Returns the ids it changed.
    """
    client = MlflowClient(tracking_uri)
    running = running_runs(client, experiment_id)
    known = {run.info.run_id: run for run in running}
    stale: list[tuple[Run, dict[str, str]]] = []
    for run in running:
        tags = owner_tags(client, run, known)
        if owner_alive(tags) is False and (prefect or FLOW_RUN_TAG not in {**tags, **run.data.tags}):
            stale.append((run, tags))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flow_runs = sorted({t[FLOW_RUN_TAG] for run, owner in stale for t in (run.data.tags, owner) if FLOW_RUN_TAG in t})
    for run, owner in stale:
        logger.warning(
            "run %s (%s) was left RUNNING by dead pid %s: marking it KILLED",
            run.info.run_id,
            run.data.tags.get("mlflow.runName", "?"),
            owner.get(PID_TAG),
        )
        note = (
            f"owner pid {owner.get(PID_TAG)} ended without closing the run (killed or crashed); "
            f"closed KILLED by pid {os.getpid()} on {socket.gethostname()} at {now}"
        )
        client.set_tag(run.info.run_id, RECOVERED_TAG, note)
        client.set_terminated(run.info.run_id, status=KILLED)
    note = f"process killed; closed by pid {os.getpid()} on {socket.gethostname()} at {now}"
    crashed = crash_flow_runs(flow_runs, note) if flow_runs else []
    return {"mlflow_runs": [run.info.run_id for run, _ in stale], "prefect_flow_runs": crashed}


def running_runs(client: MlflowClient, first: str) -> list[Run]:
    """Every RUNNING run in every active experiment of the store, those of experiment `first` first."""
    ids = [first, *(e.experiment_id for e in client.search_experiments() if e.experiment_id != first)]
    found: list[Run] = []
    for start in range(0, len(ids), 100):  # stores bound the experiments of one search
        token = None
        while True:
            page = client.search_runs(
                ids[start : start + 100],
                filter_string="attributes.status = 'RUNNING'",
                max_results=1000,
                page_token=token,
            )
            found.extend(page)
            token = page.token
            if not token:
                break
    return found


def owner_tags(client: MlflowClient, run: Run, known: dict[str, Run], depth: int = 8) -> dict[str, str]:
    """The owner tags of a run: its own, else its nearest ancestor's (parents read once, through `known`)."""
    for _ in range(depth):
        tags = run.data.tags
        if PID_TAG in tags:
            return tags
        parent_id = tags.get("mlflow.parentRunId")
        if not parent_id:
            return {}
        if parent_id not in known:
            try:
                known[parent_id] = client.get_run(parent_id)
            except Exception:  # a deleted or unreadable parent: owner unknown, the run is left as is
                return {}
        run = known[parent_id]
    return {}


def crash_flow_runs(flow_run_ids: list[str], note: str) -> list[str]:
    """Mark the dead process's Prefect flow runs CRASHED (only those still in a running/pending state)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    changed = []
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                flow_run = client.read_flow_run(UUID(flow_run_id))
            except Exception as exc:
                logger.warning("Prefect flow run %s not found on this backend (%s); left as is", flow_run_id, exc)
                continue
            if flow_run.state is None or flow_run.state.is_final():
                continue
            logger.warning(
                "Prefect flow run %s (%s) was left %s: marking it CRASHED",
                flow_run_id,
                flow_run.name,
                flow_run.state.name,
            )
            client.set_flow_run_state(UUID(flow_run_id), Crashed(message=f"process killed; {note}"), force=True)
            changed.append(flow_run_id)
    return changed
