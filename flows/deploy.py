"""Deployments of the training flow: a weekly scheduled one and a manual one for the UI form; `retrain serve`."""

from __future__ import annotations

import logging
from typing import Any

from prefect import Flow
from prefect import serve as prefect_serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from flows.env import RUN_ENV
from flows.training import retrain_flow
from retrain.paths import project_root

logger = logging.getLogger("retrain.deploy")

SCHEDULED = "retrain-scheduled"
MANUAL = "retrain-manual"
DEFAULT_CRON = "0 3 * * 1"
DEFAULT_TIMEZONE = "UTC"
WORK_POOL = "retrain-process"
TAGS = ["retrain"]
"""The same names, schedule and parameters as prefect.yaml (a test checks they agree)."""
ENTRYPOINT = "flows/training.py:retrain_flow"
JOB_VARIABLES = {"env": RUN_ENV}
"""A worker's flow-run processes get the settings `retrain` itself applies (our log lines in the Prefect UI)."""


def deployments(
    cron: str | None = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    flow: Flow[..., Any] = retrain_flow,
    job_variables: dict[str, Any] | None = None,
) -> list[RunnerDeployment]:
    """The scheduled (trigger=schedule) and manual (trigger=ui) deployments; `cron=None` drops the schedule."""
    scheduled = flow.to_deployment(
        name=SCHEDULED,
        schedules=[Cron(cron, timezone=timezone)] if cron else None,
        parameters={"trigger": "schedule"},
        description=f"Retraining on params.yaml (cron {cron or 'none'} {timezone}); recorded as trigger=schedule.",
        tags=TAGS,
        job_variables=job_variables,
    )
    manual = flow.to_deployment(
        name=MANUAL,
        parameters={"trigger": "ui"},
        description="Run from the Prefect UI: fill the request form (empty fields keep params.yaml); trigger=ui.",
        tags=TAGS,
        job_variables=job_variables,
    )
    return [scheduled, manual]


def ui_url() -> str | None:
    """Where the Prefect UI of the configured API is (None: no PREFECT_API_URL, an ephemeral API has no UI)."""
    if not PREFECT_API_URL.value():
        return None
    return PREFECT_UI_URL.value()


def serve(cron: str | None = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE, only: str | None = None) -> None:
    """Serve the deployments from this process until interrupted (runs execute here, no work pool needed)."""
    chosen = [d for d in deployments(cron, timezone) if only is None or d.name == only]
    if not chosen:
        raise KeyError(f"no deployment named {only!r}; choose {SCHEDULED} or {MANUAL}")
    url = ui_url()
    if url is None:
        logger.warning(
            "PREFECT_API_URL is not set: runs only start from the schedule and nobody can see them. "
            "Start `make servers` and `export PREFECT_API_URL=http://127.0.0.1:4200/api` first."
        )
    else:
        names = ", ".join(f"retrain/{d.name}" for d in chosen)
        logger.info("serving %s; open %s/deployments to start a run from the form", names, url)
    prefect_serve(*chosen, print_starting_message=url is not None)


def describe() -> list[dict[str, Any]]:
    """Names, schedules and fixed parameters of the deployments (for docs and tests)."""
    return [
        {
            "name": d.name,
            "parameters": d.parameters,
            "schedules": [s.schedule.model_dump(mode="json") for s in (d.schedules or [])],
            "job_variables": d.job_variables,
        }
        for d in deployments(job_variables=JOB_VARIABLES)
    ]


def register(work_pool: str = WORK_POOL) -> list[str]:
    """Create or update both deployments on a work pool, run by `prefect worker start --pool <work_pool>`.

    The same as `prefect deploy --all` with prefect.yaml, without its post-deploy worker lookup, which the
    pinned server (fastapi 0.154) answers with 422 after the first deployment is created.
    """
    # from_source: the worker runs each flow run in this checkout (a set_working_directory pull step)
    flow = retrain_flow.from_source(source=str(project_root()), entrypoint=ENTRYPOINT)
    ids = [str(d.apply(work_pool_name=work_pool)) for d in deployments(flow=flow, job_variables=JOB_VARIABLES)]
    logger.info("registered %s, %s on pool %s; run its worker", SCHEDULED, MANUAL, work_pool)
    return ids


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if sys.argv[1:2] != ["register"]:
        sys.exit("usage: python -m flows.deploy register [WORK_POOL]")
    register(*(sys.argv[2:3] or [WORK_POOL]))
