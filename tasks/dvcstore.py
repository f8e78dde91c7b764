"""DVC data versioning through DVC's own cache and remote APIs.

Only calls that never take the repo lock are used here, because `dvc repro` runs our stages as its
children and the Prefect flow may run beside a `dvc` command.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

from retrain.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def file_md5(path: Path) -> str:
    """DVC 3's hash of a file: the plain md5 of its bytes."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _route_dvc_logs() -> None:
    """`import dvc` attaches a handler printing INFO to stdout; send DVC's warnings to our logging instead."""
    for name in ("dvc", "dvc_objects", "dvc_data"):
        dvc_logger = logging.getLogger(name)
        dvc_logger.handlers.clear()
        dvc_logger.setLevel(logging.WARNING)
        dvc_logger.propagate = True


@functools.cache
def open_repo(root: Path) -> Any:
    """The DVC repo at the project root (constructing it does not take the lock)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    _route_dvc_logs()
    try:
        return Repo(str(root))
    except NotDvcRepoError as exc:
        raise ConfigError(f"{root} is not a DVC repository (run `dvc init`): {exc}") from exc


def add_to_cache(root: Path, path: Path, md5: str | None = None) -> str:
    """Copy a file into the local DVC cache (no-op if present); returns its md5 (pass it if known)."""
    md5 = md5 or file_md5(path)
    repo = open_repo(root)
    from dvc_objects.fs.local import LocalFileSystem

    repo.cache.local.add(str(path), LocalFileSystem(), md5, hardlink=False)
    return md5


def push(root: Path, md5: str, remote: str | None) -> str:
    """Push one cached object to a DVC remote; returns the remote's URL."""
    from dvc_data.hashfile.hash_info import HashInfo

    repo = open_repo(root)
    try:
        odb = repo.cloud.get_remote_odb(remote)
    except Exception as exc:
        raise ConfigError(f"DVC remote {remote or '(default)'} is not configured: {exc}") from exc
    result = repo.cloud.push([HashInfo("md5", md5)], remote=remote)
    if result.failed:
        raise RuntimeError(f"dvc push of {md5} to {odb.path} failed")
    return str(odb.path)


def restore(root: Path, md5: str, dest: Path) -> bool:
    """Put the cached object `md5` at dest (a writable copy); False when the cache lacks it."""
    cache = open_repo(root).cache.local
    if not cache.exists(md5):
        return False
    source = Path(cache.oid_to_path(md5))
    if file_md5(source) != md5:
        logger.warning("DVC cache object %s is corrupted; not restoring %s", md5, dest)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".restoring")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    return True


def commit_pipeline(root: Path) -> None:
    """Record the workspace's stage outputs in dvc.lock, so `dvc status` agrees with the flow."""
    repo = open_repo(root)
    repo.commit(None, force=True, relink=False)


def fetch(root: Path, md5: str, dest: Path, remote: str | None = None) -> None:
    """Put object `md5` at dest: from the local DVC cache, else pulled from the DVC remote; hash-checked."""
    from dvc_data.hashfile.hash_info import HashInfo

    if restore(root, md5, dest):
        return
    repo = open_repo(root)
    try:
        result = repo.cloud.pull([HashInfo("md5", md5)], remote=remote)
    except Exception as exc:
        raise DataError(f"DVC remote {remote or '(default)'}: cannot fetch object {md5}: {exc}") from exc
    if result.failed or not restore(root, md5, dest):
        raise DataError(f"DVC remote {remote or '(default)'} does not hold object {md5} (was it pushed?)")
    if file_md5(dest) != md5:
        dest.unlink()
        raise DataError(f"object {md5} fetched from the DVC remote does not match its hash")
