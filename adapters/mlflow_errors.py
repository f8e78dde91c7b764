"""MLflow store failures in words that name the store: a read-only tracking database, said before anything runs.

MLflow reports a SQLite tracking database it cannot write as `(sqlite3.OperationalError) attempt to write a
readonly database` plus the SQL statement, at the first write of a run (creating the experiment, the parent
run, a model version), which names neither the file nor what to do. `registry_problem` finds the usual causes
(the file, or its folder, not writable; a read-only file system) before a run starts, without importing
MLflow; `translate` turns the error into `ReadOnlyRegistryError` wherever a caller catches it later.

An http(s) tracking server is the other store that fails in unhelpful words: MLflow's client retries a server
that does not answer (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default, backoff factor 2: about 4 minutes per call,
which carries a run through a server restart), then raises `Max retries exceeded` for whichever call came last.
`server_problem` asks the server once before a run starts; `unreachable_server_message` names it when a run
fails on it; `fail_fast_when_down` keeps the clean-up of a failed run (ending its runs) from waiting out the
whole retry budget again for every call while the server is still down.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from adapters.mlflow_store import scheme, sqlite_path
from retrain.data.sources import display
from retrain.errors import ConfigError

logger = logging.getLogger(__name__)

RETRY_ENV, TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
"""MLflow's HTTP client settings, read from the environment at every request."""
PROBE_TIMEOUT = 5.0
"""Seconds a tracking server gets to answer GET /health."""
UNREACHABLE_MARKERS = ("max retries exceeded", "failed to establish a new connection", "connection refused")
"""How requests/urllib3 (inside MLflow's errors) say a server did not answer."""
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


def server_url(tracking_uri: str) -> str | None:
    """The base URL of an http(s) tracking server, user and password masked; None for any other store."""
    if scheme(tracking_uri) not in {"http", "https"}:
        return None
    parsed = urlparse(tracking_uri)
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return parsed._replace(netloc=netloc).geturl().rstrip("/")


def server_problem(tracking_uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why an http(s) tracking server cannot take a run (one GET /health, no retries), or None (answers; no server)."""
    base = server_url(tracking_uri)
    if base is None:
        return None
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout) as answer:  # no credentials: /health is open
            answer.read(64)
            return None
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answers (an auth proxy, no /health route): MLflow's own calls will say more
            return None
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = str(exc.reason if isinstance(exc, urllib.error.URLError) else exc)
    return (
        f"the MLflow tracking server at tracking.tracking_uri={base} is not answering (GET {base}/health: {reason}). "
        "Nothing ran and nothing was written. Start it (`make servers SERVERS=postgres,mlflow`) and retry, or "
        "point tracking.tracking_uri at a store that is up"
    )


def is_unreachable(exc: BaseException, tracking_uri: str) -> bool:
    """Whether an exception (or one it came from) is MLflow giving up on the tracking server at `tracking_uri`."""
    parsed = urlparse(tracking_uri)
    names = (tracking_uri.rstrip("/").lower(), f"host='{parsed.hostname}', port={parsed.port}".lower())
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if any(m in text for m in UNREACHABLE_MARKERS) and any(n in text for n in names):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_budget() -> str:
    """MLflow's HTTP retry settings in force, in words (for messages)."""
    retries = os.environ.get(RETRY_ENV) or "7"
    return f"{RETRY_ENV}={retries}, backoff factor {os.environ.get('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR') or '2'}"


def unreachable_server_message(exc: BaseException, tracking_uri: str) -> str | None:
    """A failed run's error when the tracking server stopped answering: the server, what happened, what to do."""
    base = server_url(tracking_uri)
    if base is None or not is_unreachable(exc, tracking_uri):
        return None
    return (
        f"the MLflow tracking server at {base} stopped answering and did not come back within MLflow's HTTP retries "
        f"({retry_budget()}; about 4 minutes per call with the defaults). The run stopped in the stage that was "
        "writing; the runs it had open end FAILED, or, if the server was still down, KILLED by the next run's "
        "recovery; no alias moved unless promote said so above (`retrain history`). Start the server "
        "(`make servers SERVERS=postgres,mlflow`) and run again: the stages that finished come from the cache. "
        f"MLflow said: {str(exc).splitlines()[0][:300]}"
    )


@contextlib.contextmanager
def fail_fast_when_down(tracking_uri: str | None) -> Iterator[bool]:
    """While an http(s) tracking server does not answer, MLflow calls in the block fail at once (no retries).

    For clean-up after a failure (ending runs, the parent's summary): each call would otherwise wait out the
    whole retry budget again. Yields whether the server was down; a server that answers changes nothing.
    """
    down = bool(tracking_uri) and server_problem(tracking_uri or "", timeout=2.0) is not None
    if not down:
        yield False
        return
    logger.warning("MLflow tracking server %s is down: closing runs without retries", server_url(tracking_uri or ""))
    saved = {key: os.environ.get(key) for key in (RETRY_ENV, TIMEOUT_ENV)}
    os.environ.update({RETRY_ENV: "0", TIMEOUT_ENV: "5"})
    try:
        yield True
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
