"""The audit log of alias moves, stored in the MLflow tracking store next to the registry it describes.

One MLflow run per entry in the experiment `retrain-audit`, its fields as `retrain.audit.*` tags. Living in
the tracking store (not a local file) means the log is wherever the registry is: a remote tracking server
sees every move made from any workspace, and `retrain history` reads it with the same credentials.
Entries are appended by the code that moves the alias, inside the registry lock, right after the move.
"""

from __future__ import annotations

import getpass
import logging
import time
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adapters.mlflow_runs import create_run

logger = logging.getLogger(__name__)

EXPERIMENT = "retrain-audit"
PREFIX = "retrain.audit."
FIELDS = (
    "model_name",
    "alias",
    "from_version",
    "to_version",
    "gate_record",
    "decision",
    "failed_gates",
    "trigger",
    "actor",
    "time",
    "run_id",
    "seq",
)
"""Every entry's keys (plus `audit_run_id`, the entry's own MLflow run). `None` is stored as an empty tag."""


def actor() -> str:
    """Who made the move: the OS user (getpass), or `unknown` where there is none (some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def experiment_id(client: MlflowClient, create: bool) -> str | None:
    """The audit experiment's id, created on first use (None when reading a store that has none)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(EXPERIMENT, tags={"retrain.purpose": "audit log of registry alias moves"})
    except MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def append(
    tracking_uri: str,
    model_name: str,
    alias: str,
    from_version: str | None,
    to_version: str,
    *,
    gate_record: str | None,
    decision: str | None,
    trigger: str,
    run_id: str | None,
    failed_gates: list[str] | None = None,
) -> dict[str, Any]:
    """Record one alias move (call it under the registry lock, right after the move) and return the entry."""
    client = MlflowClient(tracking_uri)
    exp = experiment_id(client, create=True)
    if exp is None:  # create=True always returns an id; this keeps the type checker honest
        raise RuntimeError(f"could not create the audit experiment {EXPERIMENT!r}")
    now = datetime.now(UTC)
    entry: dict[str, Any] = {
        "model_name": model_name,
        "alias": alias,
        "from_version": from_version,
        "to_version": to_version,
        "gate_record": gate_record,
        "decision": decision,
        "failed_gates": list(failed_gates or []),
        "trigger": trigger,
        "actor": actor(),
        "time": now.isoformat(timespec="microseconds"),
        "seq": str(time.time_ns()),
    }
    tags = {PREFIX + k: _tag(v) for k, v in entry.items()}
    name = f"{model_name}@{alias}: {from_version or '-'} -> {to_version}"
    run = create_run(client, exp, name, tags, start_time=int(now.timestamp() * 1000))  # recovered if killed here
    entry["run_id"] = run_id or run.info.run_id
    entry["audit_run_id"] = run.info.run_id
    client.set_tag(run.info.run_id, PREFIX + "run_id", entry["run_id"])
    client.set_terminated(run.info.run_id)
    logger.info(
        "audit: %s@%s %s -> %s (trigger %s, by %s)", model_name, alias, from_version, to_version, trigger, actor()
    )
    return entry


def _tag(value: Any) -> str:
    """A field as a tag value (lists comma-joined, None empty)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _entry(tags: dict[str, str], audit_run_id: str) -> dict[str, Any]:
    """An entry read back from its run's tags."""
    raw = {k: tags.get(PREFIX + k, "") for k in FIELDS}
    entry: dict[str, Any] = {k: (v or None) for k, v in raw.items()}
    entry["failed_gates"] = [g for g in raw["failed_gates"].split(",") if g]
    entry["audit_run_id"] = audit_run_id
    return entry


def entries(tracking_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every audit entry of one registered model, oldest first."""
    client = MlflowClient(tracking_uri)
    exp = experiment_id(client, create=False)
    if exp is None:
        return []
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [exp],
            filter_string=f"tags.`{PREFIX}model_name` = '{model_name}'",
            max_results=1000,
            page_token=token,
        )
        found += [_entry(r.data.tags, r.info.run_id) for r in page]
        token = page.token
        if not token:
            break
    return sorted(found, key=lambda e: int(e["seq"] or 0))


def previous_champion(history: list[dict[str, Any]], alias: str, current: str | None) -> str | None:
    """The version `alias` pointed at before it moved to `current` (newest such move), if any."""
    for entry in reversed(history):
        if entry["alias"] == alias and entry["to_version"] == current:
            return entry["from_version"]
    return None


def was_champion(history: list[dict[str, Any]], alias: str, version: str) -> bool:
    """Whether `alias` ever pointed at `version` according to the log."""
    return any(e["alias"] == alias and version in (e["to_version"], e["from_version"]) for e in history)
