"""The registry lock: one holder at a time for every read-then-move of an alias, wherever the registry is shared.

Kinds (`promote.lock`, docs/concurrency.md):

- `file` (the default for SQLite and file stores): a file lock keyed on the STORE, next to the SQLite file
  (`mlflow.db.registry.lock`), so two workspaces on one host using one store exclude each other;
- `postgres` (auto for a `postgresql://` tracking URI): `pg_advisory_lock` in that same database, keyed on the
  model name, so promotions from any host exclude each other; a killed holder's connection drops and the
  server releases its lock;
- `prefect` (auto for an http(s) tracking URI when PREFECT_API_URL is set): a Prefect global concurrency
  limit `retrain-registry-<model>` with one slot, created if missing; the slot is a lease renewed while the
  holder lives, so a killed holder's slot frees itself after LEASE_SECONDS.

Each waits up to `timeout` seconds, saying who holds the lock where it can, then raises RegistryBusyError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

from filelock import FileLock, Timeout

from adapters.mlflow_store import advisory_key, advisory_lock, scheme, store_lock_path
from retrain.errors import ConfigError

logger = logging.getLogger(__name__)

KINDS = ("auto", "file", "postgres", "prefect")
LEASE_SECONDS = 120.0
"""Lease of the Prefect slot: renewed while the holder lives; a killed holder's slot frees itself after this."""
POLL_SECONDS = 1.0


class RegistryBusyError(RuntimeError):
    """Another promotion or rollback held the registry lock for longer than `promote.lock_timeout` (exit 1)."""


def resolve_kind(kind: str, tracking_uri: str) -> str:
    """The lock a store gets: `auto` by the tracking URI and PREFECT_API_URL; an explicit kind must fit the store."""
    store = scheme(tracking_uri)
    if kind == "auto":
        if store == "postgresql":
            return "postgres"
        if store in {"http", "https"} and prefect_api():
            return "prefect"
        return "file"
    if kind == "postgres" and store != "postgresql":
        raise ConfigError(f"promote.lock: postgres needs a postgresql:// tracking URI, not {tracking_uri}")
    if kind == "prefect" and not prefect_api():
        raise ConfigError("promote.lock: prefect needs a Prefect server (PREFECT_API_URL is not set)")
    if kind not in KINDS:
        raise ConfigError(f"promote.lock: {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def prefect_api() -> str | None:
    """The Prefect server this process talks to (PREFECT_API_URL: environment, profile or settings), or None."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def limit_name(model_name: str) -> str:
    """The Prefect global concurrency limit of one registered model (a valid Prefect name)."""
    return "retrain-registry-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_name)


def describe(what: str) -> str:
    """Who we are, in the holder file and lock messages."""
    return f"pid {os.getpid()} on {socket.gethostname()} ({what})"


@contextlib.contextmanager
def file_lock(tracking_uri: str, what: str, timeout: float) -> Iterator[str]:
    """A file lock next to the store; a holder file beside it names who holds it."""
    path = store_lock_path(tracking_uri, "registry")
    info = path.with_name(path.name + ".json")
    lock = FileLock(str(path), thread_local=False)
    deadline, announced = time.monotonic() + timeout, None
    while True:
        try:
            lock.acquire(timeout=min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
            break
        except Timeout:
            holder = _read_holder(info)
            if holder != announced:
                logger.warning("registry lock %s is held by %s; waiting (up to %gs)", path, holder, timeout)
                announced = holder
            if time.monotonic() >= deadline:
                raise RegistryBusyError(
                    f"registry lock {path} still held by {holder} after {timeout:g}s (promote.lock_timeout)"
                ) from None
    try:
        with contextlib.suppress(OSError):
            info.write_text(json.dumps({"holder": describe(what), "since": time.time()}))
        yield f"file lock {path}"
    finally:
        lock.release()


def _read_holder(info: Any) -> str:
    """The holder file's line, or 'an unknown process'."""
    try:
        data = json.loads(info.read_text())
        since = time.strftime("%H:%M:%S UTC", time.gmtime(float(data["since"])))
        return f"{data['holder']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def postgres_lock(tracking_uri: str, model_name: str, what: str, timeout: float) -> Iterator[str]:
    """`pg_advisory_lock` keyed on the model name, in the tracking store's own database."""
    key = advisory_key(f"registry:{model_name}")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(advisory_lock(tracking_uri, key, what, timeout))
        except TimeoutError as exc:
            raise RegistryBusyError(f"{exc} (promote.lock_timeout)") from exc
        yield f"PostgreSQL advisory lock on {model_name!r} (key {key})"


@contextlib.contextmanager
def prefect_lock(model_name: str, what: str, timeout: float) -> Iterator[str]:
    """One slot of a Prefect global concurrency limit (created with limit 1 if missing), held as a renewed lease."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(model_name)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another process created it first: same limit
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            limit = client.read_global_concurrency_limit_by_name(name)
    if limit.limit != 1 or not limit.active:
        raise ConfigError(
            f"Prefect global concurrency limit {name} has limit {limit.limit} (active: {limit.active}); the registry "
            f"lock needs exactly one active slot: `prefect gcl update {name} --limit 1` and `prefect gcl enable {name}`"
        )
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(name, occupy=1, timeout_seconds=timeout, lease_duration=LEASE_SECONDS, strict=True)
            )
        except TimeoutError as exc:
            raise RegistryBusyError(
                f"{what}: Prefect global concurrency limit {name} still occupied after {timeout:g}s "
                f"(promote.lock_timeout; the holder shows in the Prefect UI, Concurrency page)"
            ) from exc
        yield f"Prefect global concurrency limit {name}"


@contextlib.contextmanager
def registry_lock(
    tracking_uri: str, model_name: str, kind: str = "auto", timeout: float = 600.0, what: str = "promote"
) -> Iterator[str]:
    """Hold the registry lock that fits the store (`resolve_kind`); yields a line saying which lock it is."""
    chosen = resolve_kind(kind, tracking_uri)
    started = time.perf_counter()
    if chosen == "postgres":
        manager = postgres_lock(tracking_uri, model_name, what, timeout)
    elif chosen == "prefect":
        manager = prefect_lock(model_name, what, timeout)
    else:
        manager = file_lock(tracking_uri, what, timeout)
    with manager as which:
        logger.info("%s: holding the registry lock (%s) after %.1fs", what, which, time.perf_counter() - started)
        yield which
