"""What a declared source is (file, glob of batch files, or database query) and which files it reads.

The files are what the cache key and dvc.yaml depend on: a new batch file dropped into a glob's folder
changes the key, so the next run makes a new data version.
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from retrain.errors import DataError

SourceKind = Literal["file", "glob", "sql"]
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One declared source: its kind, its spec as written in params, and its query if SQL."""

    kind: SourceKind
    spec: str
    query: str | None = None

    @property
    def is_sqlite(self) -> bool:
        """A SQLite URL reads a local file, which can then be hashed like any other input."""
        return self.kind == "sql" and self.spec.startswith("sqlite")


def parse_source(spec: str, query: str | None = None) -> Source:
    """Classify a params source string."""
    if "://" in spec:
        return Source("sql", spec, query)
    if any(ch in spec for ch in GLOB_CHARS):
        return Source("glob", spec)
    return Source("file", spec)


def resolve_path(root: Path, spec: str) -> Path:
    """A params path, relative to the project root unless absolute."""
    path = Path(spec)
    return path if path.is_absolute() else root / path


def sqlite_file(root: Path, url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL (relative paths from the root), None for in-memory."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    rest = rest[1:].split("?", 1)[0]
    return resolve_path(root, rest)


def glob_files(root: Path, spec: str) -> list[Path]:
    """The batch files a glob matches, sorted so the snapshot's row order is stable."""
    pattern = str(resolve_path(root, spec))
    return sorted(Path(p) for p in globlib.glob(pattern, recursive=True) if Path(p).is_file())


def glob_folder(spec: str) -> str:
    """The fixed folder part of a glob (what dvc.yaml depends on, since DVC deps cannot be globs)."""
    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in GLOB_CHARS):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def source_files(root: Path, source: Source) -> list[Path] | None:
    """Files whose content is the source's content; None when it cannot be known without querying."""
    if source.kind == "file":
        return [resolve_path(root, source.spec)]
    if source.kind == "glob":
        files = glob_files(root, source.spec)
        if not files:
            raise DataError(f"{source.spec}: the glob matches no files")
        return files
    if source.is_sqlite:
        path = sqlite_file(root, source.spec)
        return [path] if path is not None else None
    return None


SOURCE_KEYS = {"main": "ingest.source", "test": "ingest.test_source"}
"""The params key each declared source comes from (for messages that name it)."""

FILE_KINDS = "a CSV (.csv, .csv.gz) or Parquet (.parquet) file"


def directory_message(spec: str, path: Path) -> str:
    """Why a directory is not a source, and the glob that reads its files instead.

    A directory is not read as a dataset: a glob already reads every batch file in it (same stacking, same
    cache key per file), whereas a directory read would also pick up writers' side files (`_SUCCESS`, `.crc`)
    and silently drop Hive partition columns (`key=value` folder names are not in the files).
    """
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
    kinds = [s for s in (".parquet", ".csv.gz", ".csv") if any(p.name.lower().endswith(s) for p in files)]
    suffix = kinds[0] if kinds else ".csv"
    nested = kinds and not any(p.parent == path and p.name.lower().endswith(suffix) for p in files)
    glob = f"{spec.rstrip('/')}/{'**/' if nested else ''}*{suffix}"
    held = f"it holds {len(files)} file{'' if len(files) == 1 else 's'}" + (f": {', '.join(kinds)}" if kinds else "")
    partitions = sorted({p.name.split("=", 1)[0] for p in path.iterdir() if p.is_dir() and "=" in p.name})
    hive = (
        f"; note that a glob does not read Hive partition columns {partitions} from folder names" if partitions else ""
    )
    return (
        f"{spec!r} is a directory ({path}; {held}), not a file: name {FILE_KINDS}, or a glob of its batch "
        f"files such as {glob!r}{hive}"
    )


def file_problem(root: Path, spec: str) -> str | None:
    """Why a file source is not a readable file (a directory, missing, a broken link); None when it is a file."""
    path = resolve_path(root, spec)
    if path.is_file():
        return None
    if path.is_dir():
        return directory_message(spec, path)
    if path.is_symlink():
        return f"{spec!r} is a broken symbolic link ({path} -> {path.readlink()})"
    where = "" if Path(spec).is_absolute() else f" (relative to the project root {root})"
    folder = "" if path.parent.is_dir() else f"; nor does its folder {path.parent}"
    return f"{spec!r} does not exist{where}{folder}"


def engine_url(root: Path, source: Source) -> str:
    """The URL to connect with: a SQLite file resolved from the root and opened read-only."""
    if not source.is_sqlite:
        return source.spec
    path = sqlite_file(root, source.spec)
    if path is None:
        return source.spec
    if path.is_dir():
        raise DataError(f"{display(source.spec)}: {path} is a directory, not a SQLite database file")
    if not path.is_file():
        raise DataError(f"{display(source.spec)}: database file {path} does not exist")
    driver = source.spec.split("://", 1)[0]
    return f"{driver}:///file:{path}?mode=ro&uri=true"


def display(spec: str) -> str:
    """A source as it may appear in logs and messages: a URL's password masked."""
    if "://" not in spec:
        return spec
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(spec).render_as_string(hide_password=True)
    except ArgumentError:
        return spec.split("://", 1)[0] + "://***"
