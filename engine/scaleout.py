"""Scale-out of the candidates stage: each base family as a Prefect task on Dask workers (`runner.task_runner`).

Families are independent until stacking, and each family's trials stay sequential on its worker, so the
Dask runner gives the same models as the default one (TPE is only reproducible with sequential trials).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from engine.codedeps import code_files
from retrain.config import RunnerConfig
from retrain.errors import ConfigError

logger = logging.getLogger(__name__)


def cluster_kwargs(cfg: RunnerConfig) -> dict[str, Any]:
    """A LocalCluster of worker processes that listens on loopback only and serves no dashboard."""
    return {
        "n_workers": cfg.dask_workers,
        "threads_per_worker": cfg.dask_threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }


def dask_task_runner(cfg: RunnerConfig) -> Any:
    """prefect-dask's runner on the configured scheduler, or on a LocalCluster that lives as long as the runner."""
    from prefect_dask import DaskTaskRunner  # imported only when asked for: distributed is slow to import

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs(cfg))


@contextmanager
def family_runner(
    cfg: RunnerConfig, fn: Callable[..., Any], calls: dict[str, dict[str, Any]]
) -> Iterator[Callable[[str], Any]]:
    """Yield `outcome(name)` for each call of `fn(**calls[name])`: computed on demand in this process by
    default, or all submitted up front to Dask workers and awaited on demand.

    Inside a flow run the calls are Prefect task runs (visible in the UI, logs sent to the API); outside one
    (`retrain stage` under `dvc repro`) they go to the same Dask cluster as plain functions, since a Prefect
    task there would need an API server just to record itself.
    """
    if cfg.task_runner == "default":
        yield lambda name: fn(**calls[name])
        return
    where = cfg.dask_address or f"a LocalCluster of {cfg.dask_workers} workers"
    logger.info("runner: %d families on Dask (%s)", len(calls), where)
    with dask_task_runner(cfg) as runner:
        if FlowRunContext.get() is not None:
            remote = task(
                fn,
                name="candidates-family",
                task_run_name="candidates/{family}",
                cache_policy=NO_CACHE,
                persist_result=False,
            )
            futures = {name: runner.submit(remote, parameters=kwargs) for name, kwargs in calls.items()}
        else:
            futures = {name: runner.client.submit(fn, pure=False, **kwargs) for name, kwargs in calls.items()}
        # leaving the runner closes its client (and LocalCluster), which drops any family still running
        yield lambda name: futures[name].result()


class CodeMismatchError(RuntimeError):
    """A Dask worker imported other code than the flow's: its models would differ, so it may not train them."""


def code_root(module: str) -> Path:
    """The checkout this process imports `module` from (wherever it is on this host: no shared path needed)."""
    package = importlib.import_module(module.split(".")[0])
    return Path(package.__file__ or "").resolve().parents[1]


def code_identity(module: str) -> str:
    """md5 of every project file `module` runs (engine/codedeps), by relative path: equal on two hosts when both
    run the same commit, whatever directory each checkout is in."""
    root = code_root(module)
    digest = hashlib.md5()
    for name in code_files(root, module):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def check_code(module: str, expected: str | None) -> None:
    """Refuse to run a family on a worker whose copy of the code is not the flow's (another commit, an edit)."""
    if expected is None:
        return
    found = code_identity(module)
    if found != expected:
        raise CodeMismatchError(
            f"Dask worker on {socket.gethostname()} imports {module} from {code_root(module)}, whose code (md5 "
            f"{found}) is not the flow's ({expected}): deploy the flow's commit on every worker and restart them"
        )


def check_storage(cfg: RunnerConfig, storage: str | None) -> None:
    """A journal file is on one host's disk: with a remote scheduler, trials need an RDB URL every worker reaches."""
    if cfg.task_runner == "dask" and cfg.dask_address and storage is not None and storage.startswith("journal:"):
        raise ConfigError(
            f"candidates.storage {storage!r} is a file on this host, and runner.dask_address "
            f"{cfg.dask_address} may run families elsewhere: use an RDB URL (postgresql://...) or null"
        )


def on_dask_worker() -> bool:
    """Whether this code runs inside a Dask worker (distributed is only imported where Dask is in use)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


@contextmanager
def dask_trial_loops(
    work: Callable[[int], dict[int, Any]], copies: int
) -> Iterator[Callable[[], list[dict[int, Any]]]]:
    """Run `work(1..copies)` as tasks on the cluster this worker belongs to (a TrialSpread, see tuning.tune).

    The loops prefer the other workers; the calling task leaves its worker's thread pool meanwhile
    (`worker_client` secedes), so a worker with one thread can take a loop too. The join gathers the loops'
    results, and leaving cancels any still running.
    """
    from distributed import get_worker, worker_client

    here = get_worker().address
    with worker_client() as client:
        others = [w for w in sorted(client.scheduler_info(n_workers=-1)["workers"]) if w != here]
        # other workers first (that is the point), this one if they are all busy
        place = {"workers": others, "allow_other_workers": True} if others else {}
        futures = [client.submit(work, copy, pure=False, **place) for copy in range(1, copies + 1)]
        try:
            yield lambda: client.gather(futures)
        finally:
            client.cancel([future for future in futures if not future.done()])


def trial_spread() -> Callable[..., AbstractContextManager[Callable[[], list[dict[int, Any]]]]] | None:
    """Where a family's extra trial loops go: other Dask workers when this is one, else nowhere (threads here)."""
    return dask_trial_loops if on_dask_worker() else None
