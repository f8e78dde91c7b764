"""The deployments of prefect.yaml, served by `retrain serve`, and the pull step a worker runs before each flow run.

prefect.yaml is the one place they are declared: `prefect deploy --all` (`make deploy`) registers them on the
work pool; `retrain serve` builds the same deployments from it with `flow.to_deployment`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flows import env
from retrain.errors import ConfigError
from retrain.paths import project_root

if TYPE_CHECKING:  # the pull step imports this module in every worker run: keep Prefect and the flow lazy
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Schedule

logger = logging.getLogger("retrain.deploy")

PREFECT_YAML = "prefect.yaml"
SCHEDULED = "retrain-scheduled"
MANUAL = "retrain-manual"
WORK_POOL = "retrain-process"
"""Names declared in prefect.yaml, for lookups (`retrain serve --only`, tests); prefect.yaml stays the source."""


def enter_project() -> dict[str, str]:
    """prefect.yaml's pull step: run each flow run in this worker's checkout, not a path stored at deploy time.

    The checkout is $RETRAIN_ROOT, else the one holding the installed (editable) package; Prefect changes to
    the returned `directory` before it loads the entrypoint.
    """
    env.harden()  # pickle deserialization off before the flow run loads anything
    root = project_root()
    if not (root / "params.yaml").is_file():
        raise ConfigError(f"{root} holds no params.yaml: set RETRAIN_ROOT to the project for the worker")
    os.chdir(root)
    logger.info("flow run in %s", root)
    return {"directory": str(root)}


def load_configs(path: Path | None = None) -> list[dict[str, Any]]:
    """The deployments of prefect.yaml as `prefect deploy` validates them (its own model), keys as written."""
    from prefect.cli.deploy._models import PrefectYamlModel

    path = path or project_root() / PREFECT_YAML
    if not path.is_file():
        raise ConfigError(f"{path} not found: the deployments are declared there")
    model = PrefectYamlModel.model_validate(yaml.safe_load(path.read_text()))
    return [d.model_dump(exclude_unset=True, mode="json") for d in model.deployments]


def schedules_of(config: dict[str, Any], cron: str | None, timezone: str | None) -> list[Schedule]:
    """The deployment's cron schedules, with `cron`/`timezone` replacing the declared ones when given."""
    from prefect.schedules import Cron

    schedules = []
    for item in config.get("schedules") or []:
        if not item.get("cron"):
            raise ConfigError(f"{config['name']}: only cron schedules are supported in {PREFECT_YAML}, got {item}")
        schedules.append(
            Cron(
                cron or item["cron"],
                timezone=timezone or item.get("timezone"),
                day_or=item.get("day_or", True),
                active=item.get("active", True),
                parameters=item.get("parameters") or None,
                slug=item.get("slug"),
            )
        )
    return schedules


def deployments(
    cron: str | None = None,
    timezone: str | None = None,
    schedule: bool = True,
    path: Path | None = None,
    flow: Flow[..., Any] | None = None,
) -> list[RunnerDeployment]:
    """prefect.yaml's deployments as runner deployments; `cron`/`timezone` override it, `schedule=False` drops it."""
    from flows.training import retrain_flow

    flow = flow or retrain_flow
    built = []
    for config in load_configs(path):
        if not str(config.get("entrypoint", "")).endswith(f":{flow.fn.__name__}"):
            raise ConfigError(f"{config['name']}: entrypoint {config.get('entrypoint')} is not {flow.fn.__name__}")
        schedules = schedules_of(config, cron, timezone) if schedule else []
        description = config.get("description")
        if schedules and (cron or timezone):
            description = f"{description} Served with cron {cron or 'as declared'} ({timezone or 'declared timezone'})."
        built.append(
            flow.to_deployment(
                name=config["name"],
                schedules=schedules or None,
                parameters=config.get("parameters") or None,
                description=description,
                tags=config.get("tags"),
                job_variables=(config.get("work_pool") or {}).get("job_variables") or None,
            )
        )
    return built


def ui_url() -> str | None:
    """Where the Prefect UI of the configured API is (None: no PREFECT_API_URL, an ephemeral API has no UI)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if not PREFECT_API_URL.value():
        return None
    return PREFECT_UI_URL.value()


def serve(cron: str | None = None, timezone: str | None = None, only: str | None = None, schedule: bool = True) -> None:
    """Serve prefect.yaml's deployments from this process until interrupted (runs execute here, no work pool)."""
    from prefect import serve as prefect_serve

    built = deployments(cron, timezone, schedule)
    chosen = [d for d in built if only is None or d.name == only]
    if not chosen:
        raise KeyError(f"no deployment named {only!r}; choose one of {', '.join(d.name for d in built)}")
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
