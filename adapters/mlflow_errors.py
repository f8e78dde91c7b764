"""MLflow store failures in words that name the store: a read-only tracking database, said before anything runs.

MLflow reports a SQLite tracking database it cannot write as `(sqlite3.OperationalError) attempt to write a
readonly database` plus the SQL statement, at the first write of a run (creating the experiment, the parent
run, a model version), which names neither the file nor what to do. `registry_problem` finds the usual causes
(the file, or its folder, not writable; a read-only file system) before a run starts, without importing
MLflow; `translate` turns the error into `ReadOnlyRegistryError` wherever a caller catches it later.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from adapters.mlflow_store import sqlite_path
from retrain.data.sources import display
from retrain.errors import ConfigError

READONLY_MARKERS = ("attempt to write a readonly database", "readonly database", "read-only file system")
"""How SQLite (and the OS under it) say a write was refused because the store is read-only."""


class ReadOnlyRegistryError(ConfigError):
    """The MLflow tracking / registry store cannot be written: nothing was recorded (exit 2)."""


def _read_only_fs(path: Path) -> bool:
    """Whether the file system holding `path` is mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def registry_problem(tracking_uri: str) -> str | None:
    """Why this process cannot write the SQLite tracking database, or None (other stores are checked on use)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    folder = path.parent if path.parent.is_dir() else None
    fix = "make it writable for this user, or point tracking.tracking_uri at a writable store"
    if "mode=ro" in tracking_uri.partition("?")[2]:
        return f"MLflow tracking database {path} is opened read-only by its URI (mode=ro): {fix}"
    if path.exists() and _read_only_fs(path):
        return f"MLflow tracking database {path} is on a read-only file system: {fix}"
    if path.exists() and not os.access(path, os.W_OK):
        mode = stat.filemode(path.stat().st_mode)
        return f"MLflow tracking database {path} is read-only ({mode}, owner uid {path.stat().st_uid}): {fix}"
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        why = "SQLite writes its journal next to the database" if path.exists() else "the database is created there"
        return f"the folder {folder} of MLflow tracking database {path} is read-only ({why}): {fix}"
    return None


def is_read_only(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a store refusing a write because it is read-only."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if any(marker in text for marker in READONLY_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def translate(exc: BaseException, tracking_uri: str) -> BaseException:
    """A read-only store error as ReadOnlyRegistryError naming the database (password masked); else `exc` itself."""
    if isinstance(exc, ReadOnlyRegistryError) or not is_read_only(exc):
        return exc
    problem = registry_problem(tracking_uri)
    if problem is None:
        path = sqlite_path(tracking_uri)
        where = f"MLflow tracking database {path}" if path is not None else f"MLflow store {display(tracking_uri)}"
        problem = f"{where} is read-only: a write was refused; make it writable or use another tracking URI"
    error = ReadOnlyRegistryError(f"{problem} (MLflow: attempt to write a readonly database)")
    error.__cause__ = exc
    return error
