"""MLflow model registry access: the champion, registration and alias moves."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from retrain.errors import DataError

logger = logging.getLogger(__name__)

MODEL_HASH_TAG = "retrain.model_hash"


def champion(tracking_uri: str, model_name: str, alias: str) -> dict[str, Any] | None:
    """The version the alias points at (version, model hash, data hash), or None if there is none."""
    client = MlflowClient(tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            return None
        raise
    return {
        "model_name": model_name,
        "version": str(version.version),
        "model_hash": version.tags.get(MODEL_HASH_TAG),
        "data_hash": version.tags.get("retrain.data_hash"),
        "uri": f"models:/{model_name}/{version.version}",
    }


def load_champion_scores(
    champ: dict[str, Any], X: pd.DataFrame, task: str = "binary", labels: list[str] | None = None
) -> np.ndarray:
    """Score rows with the registered champion exactly as it is served (through pyfunc).

    Returns the shapes of `predict_scores` (P(positive), (n, k) probabilities in `labels` order, or
    predictions), so candidate and champion are scored by the same metric code.
    """
    import mlflow.pyfunc

    from retrain.models import scores_from_output

    model = mlflow.pyfunc.load_model(champ["uri"])
    try:
        return scores_from_output(model.predict(X), task, labels)
    except ValueError as exc:
        raise DataError(
            f"champion {champ['uri']} cannot be compared on this {task} task: {exc} "
            "(use a new promote.model_name when the task or label set changes)"
        ) from exc


def find_version(client: MlflowClient, model_name: str, model_hash: str) -> str | None:
    """The version already registered for this exact model content, if any (keeps promotion idempotent)."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get(MODEL_HASH_TAG) == model_hash:
            return str(version.version)
    return None
