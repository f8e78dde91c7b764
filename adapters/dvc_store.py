"""DVC data versioning through DVC's own cache and remote APIs.

Only calls that never take the repo lock are used here, because `dvc repro` runs our stages as its
children and the Prefect flow may run beside a `dvc` command.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def file_md5(path: Path) -> str:
    """DVC 3's hash of a file: the plain md5 of its bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


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
    """Copy a file into the local DVC cache; returns its md5 (pass it if known).

    An object already there is kept only if its bytes still hash to `md5`: a corrupted one is replaced.
    """
    md5 = md5 or file_md5(path)
    repo = open_repo(root)
    from dvc_objects.fs.local import LocalFileSystem

    cache = repo.cache.local
    if cache.exists(md5) and not object_intact(root, md5):
        drop_object(root, md5)
    cache.add(str(path), LocalFileSystem(), md5, hardlink=False)
    return md5


def object_intact(root: Path, md5: str) -> bool:
    """Whether the local DVC cache object `md5` exists and its content still hashes to `md5`."""
    cache = open_repo(root).cache.local
    return cache.exists(md5) and file_md5(Path(cache.oid_to_path(md5))) == md5


def drop_object(root: Path, md5: str) -> None:
    """Remove a corrupted object from the local DVC cache, so nothing restores it and the next add rewrites it."""
    source = Path(open_repo(root).cache.local.oid_to_path(md5))
    logger.warning("DVC cache object %s is corrupted (its content no longer hashes to its name): removed", md5)
    source.unlink(missing_ok=True)


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
        drop_object(root, md5)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".restoring")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    return True


def commit_pipeline(root: Path) -> None:
    """Record the workspace's stage outputs in dvc.lock, so `dvc status` agrees with the flow."""
    repo = open_repo(root)
    with contextlib.chdir(root):  # DVC's run cache resolves dvc.yaml paths against the working directory
        repo.commit(None, force=True, relink=False)


def fetch(root: Path, md5: str, dest: Path, remote: str | None = None) -> str:
    """Put object `md5` at dest, from the local DVC cache or else pulled from the remote; hash-checked.

    Returns where it came from ("cache" or "remote"). A corrupted cache object is dropped and pulled
    again; bytes that still do not hash to `md5` raise HashMismatchError and nothing is written.
    """
    from dvc_data.hashfile.hash_info import HashInfo

    cache = open_repo(root).cache.local
    origin = "cache"
    if cache.exists(md5) and file_md5(Path(cache.oid_to_path(md5))) != md5:
        logger.warning("DVC cache object %s is corrupted; fetching it from the remote again", md5)
        Path(cache.oid_to_path(md5)).unlink()
    if not cache.exists(md5):
        origin = "remote"
        # the object DB remembers folders it created; recreate ours in case the cache was deleted under it
        Path(cache.oid_to_path(md5)).parent.mkdir(parents=True, exist_ok=True)
        try:
            result = open_repo(root).cloud.pull([HashInfo("md5", md5)], remote=remote)
        except Exception as exc:
            raise DataError(f"DVC remote {remote or '(default)'}: cannot fetch object {md5}: {exc}") from exc
        if result.failed or not cache.exists(md5):
            raise DataError(
                f"DVC remote {remote or '(default)'} does not hold object {md5} (a snapshot is pushed once it passes "
                "the data gate in `validate`: did that run pass, and push to this remote?)"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".fetching")
    try:
        shutil.copyfile(cache.oid_to_path(md5), tmp)
        actual = file_md5(tmp)
        if actual != md5:
            where = "local DVC cache" if origin == "cache" else f"DVC remote {remote or '(default)'}"
            raise HashMismatchError(f"object from the {where} hashes to {actual}, expected {md5}; not restored")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return origin


class HashMismatchError(RuntimeError):
    """Fetched bytes do not hash to the object's name: a corrupted store, not bad input (exit 1)."""


@dataclass(frozen=True)
class Remote:
    """A DVC remote: its name and URL as DVC resolves it (an absolute path for a local folder)."""

    name: str
    url: str

    def portable(self, root: Path) -> str:
        """The URL as recorded in version.json: a local folder under the root relative to it, so the
        record (a DVC-tracked output) is the same on every machine."""
        if "://" in self.url:
            return self.url
        path = Path(self.url)
        base = root.resolve()
        return str(path.relative_to(base)) if path.is_relative_to(base) else self.url

    def tags(self) -> dict[str, str]:
        """The lineage tags naming this remote on MLflow runs and model versions."""
        return {"retrain.dvc_remote": self.name, "retrain.dvc_remote_url": self.url}


def remote_info(root: Path, name: str | None) -> Remote:
    """The named remote, or the repo's default (`dvc remote add -d`); ConfigError when there is none."""
    config = open_repo(root).config
    chosen = name or config["core"].get("remote")
    remotes = config["remote"]
    if not chosen:
        raise ConfigError("no DVC remote: set version.remote or add a default (`dvc remote add -d NAME URL`)")
    if chosen not in remotes:
        raise ConfigError(f"DVC remote {chosen!r} is not configured (known: {sorted(remotes)}); see `dvc remote list`")
    return Remote(chosen, str(remotes[chosen]["url"]))


def absolute_url(root: Path, url: str) -> str:
    """Undo `Remote.portable`: a relative local folder is anchored at the root."""
    if "://" in url or Path(url).is_absolute():
        return url
    return str((root / url).resolve())
