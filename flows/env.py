"""Settings every retrain process applies before Prefect is imported, so our progress lines reach the Prefect UI."""

from __future__ import annotations

import logging
import os

RUN_ENV = {
    # our loggers get Prefect's API handler: stage, tuning-progress and gate lines show in the flow run's logs
    "PREFECT_LOGGING_EXTRA_LOGGERS": "retrain,tasks,engine,adapters,flows",  # = OUR_LOGGERS (the packages)
    # the same loggers also run outside any flow (`retrain stage` under dvc, the CLI summary): no warning there
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # no network but the package index here: the ephemeral Prefect server's telemetry would only error
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Also the `env` job variable of the work-pool deployments (prefect.yaml, flows/deploy.py): runs a worker starts."""


FORCED_ENV = {
    # no model is ever unpickled in a retrain process, whatever the caller's environment says: a cloudpickle
    # python_model.pkl planted in an artifact store must fail to load (MLflow reads this at each load)
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
}
"""Set over any inherited value (`apply`, `harden`): security settings, not preferences."""


def apply() -> None:
    """Set RUN_ENV where the user has not (Prefect reads these once, when it is first imported); force FORCED_ENV."""
    for key, value in RUN_ENV.items():
        os.environ.setdefault(key, value)
    harden()


def harden() -> None:
    """Force FORCED_ENV in this process (and the processes it starts): every entry point of a retrain process."""
    os.environ.update(FORCED_ENV)


OUR_LOGGERS = ("retrain", "tasks", "engine", "adapters", "flows")
"""The project's packages (engine/codedeps.py PACKAGES): every logger of ours."""


def log_info() -> None:
    """Let our INFO lines through where nobody configured logging (a worker's or `serve`'s flow-run process).

    There Prefect leaves the root logger at WARNING, so without this the progress lines would reach neither
    the console nor the API handler that PREFECT_LOGGING_EXTRA_LOGGERS attached.
    """
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
