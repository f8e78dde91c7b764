"""Settings every retrain process applies before Prefect is imported, so our progress lines reach the Prefect UI."""

from __future__ import annotations

import os

RUN_ENV = {
    # our loggers get Prefect's API handler: stage, tuning-progress and gate lines show in the flow run's logs
    "PREFECT_LOGGING_EXTRA_LOGGERS": "retrain,tasks,flows",
    # the same loggers also run outside any flow (`retrain stage` under dvc, the CLI summary): no warning there
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # no network but the package index here: the ephemeral Prefect server's telemetry would only error
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Also the `env` job variable of the work-pool deployments (prefect.yaml, flows/deploy.py): runs a worker starts."""


def apply() -> None:
    """Set RUN_ENV where the user has not (Prefect reads these once, when it is first imported)."""
    for key, value in RUN_ENV.items():
        os.environ.setdefault(key, value)
