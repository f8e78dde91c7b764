"""Scale-out of the candidates stage: each base family as a Prefect task on Dask workers (`runner.task_runner`).

Families are independent until stacking, and each family's trials stay sequential on its worker, so the
Dask runner gives the same models as the default one (TPE is only reproducible with sequential trials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from retrain.config import RunnerConfig

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
