"""The MLflow registry read without MLflow: aliases and version tags, for the no-op check (engine/noop.py).

A SQLite store through `sqlite3` in read-only mode (`file:...?mode=ro`), an MLflow tracking server through its
REST API (`registered-models/alias`, `model-versions/search`). Stdlib only: the point is to answer before Prefect
or MLflow is imported. Anything it cannot read is an UnreadableError (the caller then runs the flow).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHALLENGER = "challenger"
MODEL_HASH_TAG = "retrain.model_hash"
"""adapters/mlflow_registry.py MODEL_HASH_TAG (not imported: that module imports MLflow)."""
HTTP_TIMEOUT = 5.0


class UnreadableError(Exception):
    """The registry could not be read here, or not unambiguously: the message says why."""


@dataclass(frozen=True)
class Registered:
    """What the registry says about the model: where the aliases point, the champion's tags, same-hash versions."""

    champion: str | None
    challenger: str | None
    tags: dict[str, str]
    same_hash: set[str]


def sqlite_registry(uri: str, name: str, alias: str, model_hash: str) -> Registered:
    """Read the aliases and tags from a SQLite MLflow store, read-only (no MLflow import, no write)."""
    path = uri.removeprefix("sqlite:///")
    if not path.startswith("/") or "?" in path:
        raise UnreadableError(f"tracking URI {uri}: only an absolute sqlite:////path is read by the fast path")
    if not Path(path).is_file():
        raise UnreadableError(f"tracking store {path} does not exist")
    connection = sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=5.0)
    connection.row_factory = sqlite3.Row
    try:

        def rows(sql: str, *args: str) -> list[dict[str, Any]]:
            """Rows of the default workspace (MLflow 3's column; absent before it)."""
            found = [dict(r) for r in connection.execute(sql, args)]
            return [r for r in found if r.get("workspace", "default") == "default"]

        def alias_of(which: str) -> str | None:
            found = rows("SELECT * FROM registered_model_aliases WHERE name = ? AND alias = ?", name, which)
            if len(found) > 1:
                raise UnreadableError(f"registry: {name}@{which} is ambiguous")
            return str(found[0]["version"]) if found else None

        champion, challenger = alias_of(alias), alias_of(CHALLENGER)
        tags: dict[str, str] = {}
        if champion is not None:
            found = rows("SELECT * FROM model_version_tags WHERE name = ? AND version = ?", name, champion)
            tags = {r["key"]: r["value"] for r in found}
        same = rows(
            "SELECT t.*, v.current_stage FROM model_version_tags t JOIN model_versions v "
            "ON v.name = t.name AND v.version = t.version WHERE t.name = ? AND t.key = ? AND t.value = ?",
            name,
            MODEL_HASH_TAG,
            model_hash,
        )
        same_hash = {str(r["version"]) for r in same if r.get("current_stage") != "Deleted_Internal"}
        return Registered(champion, challenger, tags, same_hash)
    except sqlite3.Error as exc:
        raise UnreadableError(f"registry {path} not readable by the fast path: {exc}") from None
    finally:
        connection.close()


def http_get(base: str, endpoint: str, query: Mapping[str, str]) -> dict[str, Any] | None:
    """GET an MLflow REST endpoint; None for a missing model or alias, UnreadableError for anything unexpected."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{base.rstrip('/')}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 404 and "RESOURCE_DOES_NOT_EXIST" in body:
            return None
        if exc.code == 400 and "INVALID_PARAMETER_VALUE" in body and " alias " in body and "not found" in body:
            return None  # MLflow 3's answer for an alias that is not set ("Registered model alias X not found.")
        raise UnreadableError(f"registry {base}: {endpoint} answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise UnreadableError(f"registry {base} not reachable by the fast path: {exc}") from None


def http_registry(uri: str, name: str, alias: str, model_hash: str) -> Registered:
    """Read the aliases and tags from an MLflow tracking server (REST API, no MLflow import)."""
    if any(os.environ.get(k) for k in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME")):
        raise UnreadableError("an authenticated tracking server: the fast path does not send credentials")

    def version_of(which: str) -> dict[str, Any] | None:
        found = http_get(uri, "registered-models/alias", {"name": name, "alias": which})
        return None if found is None else found.get("model_version")

    champion, challenger = version_of(alias), version_of(CHALLENGER)
    tags = {t["key"]: t["value"] for t in (champion or {}).get("tags", [])}
    found = http_get(uri, "model-versions/search", {"filter": f"name='{name}'", "max_results": "10000"}) or {}
    if found.get("next_page_token"):
        raise UnreadableError(f"registry {uri}: more versions of {name} than one page")
    same_hash = {
        str(v["version"])
        for v in found.get("model_versions", [])
        if {t["key"]: t["value"] for t in v.get("tags", [])}.get(MODEL_HASH_TAG) == model_hash
    }
    return Registered(
        str(champion["version"]) if champion else None,
        str(challenger["version"]) if challenger else None,
        tags,
        same_hash,
    )


def read_registry(uri: str, name: str, alias: str, model_hash: str) -> Registered:
    """The registry's view, from a store the fast path can read without MLflow; any other store is Changed."""
    if "'" in name:
        raise UnreadableError(f"model name {name!r} needs quoting the fast path does not do")
    if uri.startswith("sqlite:///"):
        return sqlite_registry(uri, name, alias, model_hash)
    if uri.startswith(("http://", "https://")):
        return http_registry(uri, name, alias, model_hash)
    raise UnreadableError(f"tracking URI {uri.split(':', 1)[0]}:... is not read by the fast path (sqlite or http only)")
