"""MLflow model registry access: the champion, registration and alias moves."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from retrain.errors import ConfigError, DataError

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
    champ: dict[str, Any],
    X: pd.DataFrame,
    task: str = "binary",
    labels: list[str] | None = None,
    tracking_uri: str | None = None,
) -> np.ndarray:
    """Score rows with the registered champion as it is served, after verifying its artifact against the registry.

    The version is downloaded and checked file by file against its manifest hash (`adapters.model_store`;
    ArtifactIntegrityError names the file otherwise), then loaded by retrain's installed serving code, the
    object the pyfunc predicts with (never `mlflow.pyfunc.load_model`). Returns the shapes of `predict_scores`
    (P(positive), (n, k) probabilities in `labels` order, or predictions), so candidate and champion are scored
    by the same metric code. `tracking_uri` defaults to the active one (a stage run sets it).
    """
    import mlflow

    from adapters.model_store import load_verified_predictor, verified_version
    from retrain.models.estimators import scores_from_output

    uri = tracking_uri or mlflow.get_tracking_uri()
    with verified_version(uri, champ["model_name"], str(champ["version"])) as verified:
        model = load_verified_predictor(verified)
        try:
            return scores_from_output(model.predict(X), task, labels)
        except ValueError as exc:
            raise DataError(
                f"champion {champ['uri']} cannot be compared on this {task} task: {exc} "
                "(use a new promote.model_name when the task or label set changes)"
            ) from exc


def find_version(client: MlflowClient, model_name: str, model_hash: str) -> str | None:
    """The sealed version already registered for this exact model content, if any (keeps promotion idempotent).

    A version registered before artifact manifests (no `retrain.manifest_sha256` tag) does not count: the same
    model is registered again, sealed, rather than reusing a version no retrain path will load.
    """
    from adapters.model_store import MANIFEST_TAG

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get(MODEL_HASH_TAG) == model_hash and version.tags.get(MANIFEST_TAG):
            return str(version.version)
    return None


def registry_lock(
    tracking_uri: str, model_name: str, kind: str = "auto", timeout: float = 600.0, what: str = "promote"
) -> contextlib.AbstractContextManager[str]:
    """The lock around every read-then-move of an alias (promote and rollback), keyed on the shared store.

    A file lock next to a SQLite store, a PostgreSQL advisory lock, or a Prefect global concurrency limit
    (adapters/registry_lock.py; `promote.lock`); yields which lock it holds.
    """
    from adapters.registry_lock import registry_lock as lock

    return lock(tracking_uri, model_name, kind, timeout, what)


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            return None
        raise


def require_model(client: MlflowClient, model_name: str) -> None:
    """Fail with an input error (exit 2) when the registered model does not exist."""
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"}:
            raise ConfigError(f"no registered model named {model_name!r} in this tracking store") from exc
        raise


def rollback(
    root: Path,
    tracking_uri: str,
    model_name: str,
    alias: str,
    to: str | None = None,
    lock: str = "auto",
    lock_timeout: float = 600.0,
) -> dict[str, Any]:
    """Point `alias` back at the previous champion (or at `to`, an earlier one), audited with trigger rollback.

    The previous champion is the `from_version` of the newest audit entry that moved the alias to the
    current version. Done under the registry lock (`lock`, `lock_timeout`: promote.lock, promote.lock_timeout);
    raises ConfigError (exit 2) and moves nothing when there is no previous champion or `to` is not a version
    that was champion. The target's artifact is verified against the registry first
    (`adapters.model_store.verified_version`): a tampered one raises ArtifactIntegrityError, the alias stays.
    """
    from adapters import mlflow_audit as audit
    from adapters.mlflow_store import ready
    from adapters.model_store import verified_version

    ready(tracking_uri)
    client = MlflowClient(tracking_uri)
    require_model(client, model_name)
    with registry_lock(tracking_uri, model_name, lock, lock_timeout, what=f"rollback of {model_name}@{alias}"):
        current = alias_version(client, model_name, alias)
        history = audit.entries(tracking_uri, model_name)
        if to is None:
            target = audit.previous_champion(history, alias, current)
            if target is None:
                raise ConfigError(
                    f"{model_name}@{alias} is version {current}; the audit log has no earlier {alias} to roll back to"
                )
        else:
            target = str(to)
            try:
                client.get_model_version(model_name, target)
            except MlflowException as exc:
                raise ConfigError(f"{model_name} has no version {target}") from exc
            if not audit.was_champion(history, alias, target):
                raise ConfigError(
                    f"{model_name} version {target} was never {alias} according to the audit log; "
                    f"`retrain history` lists the versions you can roll back to"
                )
        result: dict[str, Any] = {
            "model_name": model_name,
            "alias": alias,
            "from_version": current,
            "to_version": target,
        }
        if target == current:
            logger.info("rollback: %s@%s is already version %s; nothing to do", model_name, alias, target)
            return result | {"entry": None}
        version = client.get_model_version(model_name, target)
        with verified_version(tracking_uri, model_name, target):
            pass  # a tampered target raises ArtifactIntegrityError here: the alias stays where it is
        client.set_registered_model_alias(model_name, alias, target)
        logger.info("rollback: %s@%s %s -> %s", model_name, alias, current, target)
        entry = audit.append(
            tracking_uri,
            model_name,
            alias,
            current,
            target,
            gate_record=version.tags.get("retrain.gate_record"),
            decision=version.tags.get("retrain.gate_decision"),
            trigger="rollback",
            run_id=None,
        )
    return result | {"entry": entry}
