"""The artifact manifest: every file of a logged model with its sha256 and size (no MLflow here).

`promote` writes `retrain_manifest.json` next to the files it logged and records the manifest's own sha256 on
the registered version; whoever loads the version later checks the downloaded tree against it byte for byte
(`check_tree`) before anything in it is parsed or imported. The checks refuse a symlink, a special file, a
file or directory the manifest does not list, a listed file that is missing or differs, and a manifest whose
paths leave the tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "retrain_manifest.json"
FORMAT = 1
CHUNK = 1 << 20
"""Bytes read per step while hashing (models can be hundreds of MB)."""
SHA256 = re.compile(r"[0-9a-f]{64}")


MAX_NAMED = 5
"""Offending files named in one message (the rest are counted)."""


class TreeMismatchError(Exception):
    """The tree differs from its manifest; `problems` = (relative POSIX path, what is wrong), `file` the first."""

    def __init__(self, file: str, problem: str, more: list[tuple[str, str]] | None = None) -> None:
        self.problems = [(file, problem), *(more or [])]
        self.file, self.problem = file, problem
        super().__init__(self.describe())

    def describe(self) -> str:
        """`'a' is ...; 'b' is ...` for the first MAX_NAMED problems, then how many more."""
        named = "; ".join(f"{f!r} {p}" for f, p in self.problems[:MAX_NAMED])
        rest = len(self.problems) - MAX_NAMED
        return named + (f"; and {rest} more" if rest > 0 else "")


def sha256_file(path: Path) -> str:
    """The file's sha256, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """sha256 of bytes (the manifest's own hash, the registry tag)."""
    return hashlib.sha256(data).hexdigest()


def walk(root: Path) -> tuple[set[str], set[str]]:
    """(files, directories) under root as relative POSIX paths; refuses symlinks and special files (never follows)."""
    files: set[str] = set()
    dirs: set[str] = set()
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(current)
        for name in [*dirnames, *filenames]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise TreeMismatchError(rel, "is a symlink (a model artifact holds regular files only)")
            if stat.S_ISDIR(mode):
                dirs.add(rel)
            elif stat.S_ISREG(mode):
                files.add(rel)
            else:
                raise TreeMismatchError(rel, "is not a regular file")
    return files, dirs


def build_manifest(root: Path, model_dir: str, ignored: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest of every file under root but the manifest and `ignored` (root-level names); `model_dir` = the
    model's relative path."""
    files, _ = walk(root)
    files -= {MANIFEST_NAME, *ignored}
    safe_relpath(model_dir)
    if not (root / model_dir).is_dir():
        raise TreeMismatchError(model_dir, "the model directory is not in the artifact")
    return {
        "format": FORMAT,
        "model_dir": model_dir,
        "files": {
            rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in sorted(files)
        },
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest's canonical bytes (sorted keys): what is stored and what the registry tag hashes."""
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()


def safe_relpath(name: object) -> str:
    """A relative POSIX path that stays inside the tree (no absolute path, `..`, `.`, empty part or backslash)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name or name.startswith("/"):
        raise TreeMismatchError(str(name), "is not a relative path inside the artifact")
    parts = name.split("/")
    if any(part in {"", ".", ".."} for part in parts) or PurePosixPath(name).is_absolute():
        raise TreeMismatchError(name, "is not a relative path inside the artifact (path traversal)")
    return name


def parse_manifest(raw: bytes) -> dict[str, Any]:
    """The manifest's content, every path and entry validated (call only after its bytes matched the registry)."""
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise TreeMismatchError(MANIFEST_NAME, f"is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TreeMismatchError(MANIFEST_NAME, f"is not a format-{FORMAT} manifest")
    if not isinstance(manifest.get("files"), dict):
        raise TreeMismatchError(MANIFEST_NAME, f"is not a format-{FORMAT} manifest")
    for name, entry in manifest["files"].items():
        safe_relpath(name)
        if name == MANIFEST_NAME:
            raise TreeMismatchError(name, "the manifest lists itself")
        if not isinstance(entry, dict) or not SHA256.fullmatch(str(entry.get("sha256"))):
            raise TreeMismatchError(name, "manifest entry has no sha256")
        if not isinstance(entry.get("size"), int) or entry["size"] < 0:
            raise TreeMismatchError(name, "manifest entry has no size")
    safe_relpath(manifest.get("model_dir"))
    return manifest


def implied_dirs(files: set[str]) -> set[str]:
    """Every directory that holds a listed file."""
    return {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}


def check_tree(root: Path, manifest: dict[str, Any]) -> None:
    """Raise TreeMismatchError unless root holds exactly the manifest's files (and the manifest), each with its hash."""
    listed: dict[str, dict[str, Any]] = manifest["files"]
    files, dirs = walk(root)
    files.discard(MANIFEST_NAME)
    problems = [(name, "is not in the manifest (a file was added)") for name in sorted(files - set(listed))]
    problems += [
        (name + "/", "is not in the manifest (a directory was added)")
        for name in sorted(dirs - implied_dirs(set(listed)))
    ]
    problems += [(name, "is missing (a file was removed)") for name in sorted(set(listed) - files)]
    for name in sorted(files & set(listed)):
        entry, size = listed[name], (root / name).stat().st_size
        if size != entry["size"]:
            problems.append((name, f"has {size} bytes, the manifest says {entry['size']} (edited)"))
        elif sha256_file(root / name) != entry["sha256"]:
            problems.append((name, "has another sha256 than the manifest's (edited)"))
    if not problems and not (root / manifest["model_dir"]).is_dir():
        problems.append((manifest["model_dir"], "is not a directory of the artifact (the manifest's model_dir)"))
    if problems:
        raise TreeMismatchError(*problems[0], problems[1:])
