"""The MLflow store's first touch in a process, serialized: concurrent first use of an empty store succeeds.

MLflow creates its tables (and runs its alembic migrations) the first time a process opens a database store,
for the tracking and again for the model-registry store. Two processes doing that at once on one fresh SQLite
file collide (`table _alembic_tmp_experiments already exists`); on PostgreSQL two concurrent `create_all`
can collide as well. `ready(uri)` opens both stores under a lock held across processes: a file lock next to
the SQLite file (or in a per-user lock directory keyed by the URI when that directory is not writable), a
`pg_advisory_lock` in the database itself for PostgreSQL. Call it before any other MLflow access
(engine/context.py `ensure_experiment` does, for every pipeline run and stage). Once per URI and process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)

INIT_TIMEOUT = 300.0
"""Seconds to wait for another process's store initialization (migrations on a big store take a while)."""
LOCK_NAMESPACE = zlib.crc32(b"retrain") & 0x7FFFFFFF
"""First key of every retrain PostgreSQL advisory lock (pg_advisory_lock(int4, int4)); the second names what."""
INIT_KEY = 0
"""Second advisory-lock key of the store initialization (registry locks use a hash of the model name, never 0)."""
_READY: set[str] = set()


def scheme(uri: str) -> str:
    """The store kind of a tracking URI: sqlite, postgresql, mysql, http, https, file, ... ('' for a bare path)."""
    return urlparse(uri).scheme.split("+")[0].lower()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (absolute, symlinks resolved), or None for any other store."""
    if scheme(uri) != "sqlite":
        return None
    raw = uri.split("://", 1)[1]
    path = raw[1:] if raw.startswith("/") else raw  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    path = path.split("?", 1)[0].removeprefix("file:")  # sqlite:///file:x.db?mode=ro&uri=true is SQLite's URI form
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().resolve()


def default_tracking_uri(root: Path) -> str:
    """The SQLite file at the project root, whatever the current directory (no MLflow import: preflight uses it)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def user_lock_dir() -> Path:
    """Per-user directory for locks keyed by a URI hash (when there is no writable directory next to the store)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "retrain" / "locks"


def store_lock_path(uri: str, suffix: str) -> Path:
    """A lock file keyed on the STORE, so every workspace using it finds the same file.

    SQLite: next to the database file (`mlflow.db.<suffix>.lock`), which every user of the store can reach;
    anything else, or a database directory that is not writable: the per-user lock dir, named by the URI's hash
    (that excludes processes of one user on one host only: docs/concurrency.md).
    """
    db = sqlite_path(uri)
    if db is not None and os.access(db.parent, os.W_OK):
        return db.with_name(f"{db.name}.{suffix}.lock")
    where = str(db) if db is not None else uri
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    directory = user_lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{suffix}-{digest}.lock"


def advisory_key(what: str) -> int:
    """A non-negative int4 naming what an advisory lock protects (never INIT_KEY)."""
    return (zlib.crc32(what.encode()) & 0x7FFFFFFF) or 1


def postgres_connection(uri: str, what: str) -> object:
    """One dedicated SQLAlchemy connection to the store's database (no pool: closing it ends its advisory locks).

    Its `application_name` says who we are, so a process waiting for the lock can name the holder.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    name = f"retrain {what} pid {os.getpid()} on {socket.gethostname()}"[:63]
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={"application_name": name})
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def advisory_holder(conn: object, key: int) -> str:
    """Who holds retrain's advisory lock `key` in this database: application name, pid, client, since."""
    import sqlalchemy

    query = sqlalchemy.text(
        "SELECT a.application_name, a.pid, a.client_addr, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid::text::bigint = :ns AND l.objid::text::bigint = :key AND l.objsubid = 2"
    )
    try:
        row = conn.execute(query, {"ns": LOCK_NAMESPACE, "key": key}).first()  # type: ignore[attr-defined]
    except Exception as exc:  # pg_stat_activity may be restricted: the lock still works
        return f"an unknown session ({type(exc).__name__} reading pg_locks)"
    if row is None:
        return "nobody (just released)"
    return f"'{row[0] or '?'}' (server pid {row[1]}, client {row[2] or 'local'}, connected {row[3]:%Y-%m-%d %H:%M:%S})"


@contextlib.contextmanager
def advisory_lock(uri: str, key: int, what: str, timeout: float) -> Iterator[object]:
    """Hold `pg_advisory_lock(LOCK_NAMESPACE, key)` on a connection of its own; TimeoutError naming the holder.

    A session lock: released when we unlock, or by the server when this process dies and its connection drops.
    """
    import sqlalchemy

    conn = postgres_connection(uri, what)
    try:
        deadline, announced = time.monotonic() + timeout, None
        try_lock = sqlalchemy.text("SELECT pg_try_advisory_lock(:ns, :key)")
        while not conn.execute(try_lock, {"ns": LOCK_NAMESPACE, "key": key}).scalar():  # type: ignore[attr-defined]
            holder = advisory_holder(conn, key)
            if holder != announced:
                logger.warning("%s: advisory lock (%d, %d) held by %s; waiting", what, LOCK_NAMESPACE, key, holder)
                announced = holder
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{what}: PostgreSQL advisory lock ({LOCK_NAMESPACE}, {key}) still held by {holder} "
                    f"after {timeout:g}s"
                )
            time.sleep(0.5)
        try:
            yield conn
        finally:
            unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:ns, :key)")
            with contextlib.suppress(Exception):
                conn.execute(unlock, {"ns": LOCK_NAMESPACE, "key": key})  # type: ignore[attr-defined]
    finally:
        conn.close()  # type: ignore[attr-defined]


@contextlib.contextmanager
def init_lock(uri: str) -> Iterator[None]:
    """The cross-process lock around a store's initialization (nothing to hold for a server or file store)."""
    kind = scheme(uri)
    if kind == "sqlite":
        path = store_lock_path(uri, "init")
        try:
            with FileLock(str(path), timeout=INIT_TIMEOUT):
                yield
        except Timeout as exc:
            raise TimeoutError(f"MLflow store {uri}: init lock {path} still held after {INIT_TIMEOUT:g}s") from exc
    elif kind == "postgresql":
        with advisory_lock(uri, INIT_KEY, f"initialize MLflow store {uri}", INIT_TIMEOUT):
            yield
    else:
        yield


def ready(uri: str) -> None:
    """Open the tracking and the model-registry store once, under the init lock: tables exist after this."""
    db = sqlite_path(uri)
    if uri in _READY and (db is None or db.exists()):
        return
    kind = scheme(uri)
    if kind not in {"sqlite", "postgresql", "mysql", "mssql"}:
        _READY.add(uri)  # a tracking server or a file store migrates nothing in this process
        return
    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    with init_lock(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the tracking store: tables created or migrated here
        client.search_registered_models(max_results=1)  # the model-registry store: its own init
    _READY.add(uri)
    logger.debug("MLflow store %s ready in %.2fs", uri, time.perf_counter() - started)
