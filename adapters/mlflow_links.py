"""Links into the MLflow UI (runs, model versions, artifacts), from the configured UI address, never a guessed port."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

UI_ENV = "RETRAIN_MLFLOW_UI_URL"
SERVERS_STATE = ".retrain/servers/mlflow.pid"
"""The pid file `make servers` (scripts/servers.py) writes for the MLflow UI it started, with its port."""
DEFAULT_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str, ui_url: str | None = None, root: Path | None = None) -> tuple[str, bool]:
    """(base URL of the MLflow UI, whether it is known to serve this store).

    Order: `tracking.ui_url`; an http(s) tracking URI (the server is the UI); $RETRAIN_MLFLOW_UI_URL; the port of
    the UI `make servers` started for this project; else MLflow's default port (not known to be running).
    """
    if ui_url:
        return ui_url.rstrip("/"), True
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), True
    if os.environ.get(UI_ENV):
        return os.environ[UI_ENV].rstrip("/"), True
    if root is not None:
        state = root / SERVERS_STATE
        try:
            port = int(json.loads(state.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            port = None
        if port is not None:
            return f"http://127.0.0.1:{port}", True
    return DEFAULT_UI, False


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """The run's artifact viewer opened on `path` (e.g. the model card)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{quote(path)}"


def model_version_url(base: str, model_name: str, version: str | int) -> str:
    """The registered model version's page."""
    return f"{base}/#/models/{quote(model_name)}/versions/{version}"
