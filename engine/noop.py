"""The no-op fast path: decide "nothing changed" from the lineage before Prefect or MLflow is imported.

A completed default run (params.yaml, no overrides, not a dry run) that kept or promoted the champion leaves a
stamp (`.retrain/noop.json`): the md5 of dvc.yaml, dvc.lock, requirements.lock and the params values, the Python
version, the registry it promoted in and its summary. `decide` then checks, re-hashing everything:

- the stamp against the files now (environment lock, Python, dvc.yaml, dvc.lock, params values);
- dvc.yaml's stages against dvc.lock (names, commands, dep / out paths, params keys);
- every dvc.lock stage: each dep's and out's md5 (DVC 3's hashes: plain md5 of a file, `<md5>.dir` of the JSON
  listing of a directory) and each params value against params.yaml;
- the registry: champion and challenger still point at the version the run kept, that version carries the
  workspace's model and data hashes, and no other live version holds the same model (sqlite:/// read-only,
  or an http MLflow server's REST API: adapters/registry_readonly.py; any other store: slow path).

These are the inputs of every stage's cache key (engine/context.py), so "unchanged" means the flow would have
answered every stage from cache and promote would have kept the champion. Any doubt answers "changed": a false
"changed" costs one normal run, a false "unchanged" would be a bug. Stdlib and PyYAML only: no Prefect, MLflow
or DVC import here (tests/unit/test_noop.py checks sys.modules).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters.dvc_store import file_md5  # stdlib-only at import, like this module
from adapters.mlflow_store import default_tracking_uri  # no MLflow import
from adapters.registry_readonly import CHALLENGER, MODEL_HASH_TAG, UnreadableError, read_registry
from retrain.catalog import LOCK_FILE, PROMOTION, SNAPSHOT

logger = logging.getLogger(__name__)

STAMP = ".retrain/noop.json"
"""What the last completed default run left for the fast path (never code: read as JSON only)."""
STAMP_FORMAT = 1
WORKSPACE_LOCK = ".retrain/workspace.lock"
"""engine/recovery.py's workspace lock (a filelock flock): held by a run in progress."""
PARAMS_FILE = "params.yaml"
KEPT_ACTIONS = ("promoted", "already_champion")
"""Promotion outcomes after which an unchanged rerun's promote would do nothing and exit 0."""
MANIFEST_TAG = "retrain.manifest_sha256"
DATA_HASH_TAG = "retrain.data_hash"
SUMMARY_KEYS = (
    "metrics",
    "gates",
    "families",
    "family",
    "selection",
    "decision",
    "failed_gates",
    "model_name",
    "data_hash",
    "metric",
    "mlflow_experiment_id",
    "tracking_uri",
    "mlflow_ui_url",
    "mlflow_ui_known",
)
"""Keys of the last run's summary (flows/summary.py) a no-op repeats: they describe the unchanged workspace."""


class ChangedError(Exception):
    """Something differs from the recorded lineage (or cannot be checked): the message says what."""


@dataclass
class Verdict:
    """The fast path's answer: unchanged or not, why, and (unchanged) the summary a no-op prints."""

    unchanged: bool
    reason: str
    seconds: float
    files_hashed: int = 0
    champion_version: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def dir_md5(path: Path) -> tuple[str, int, int]:
    """DVC 3's hash of a directory (`<md5>.dir`), its size and file count.

    The md5 of `json.dumps([{"md5": ..., "relpath": ...}, ...], sort_keys=True)` over every file, sorted by
    relative path (dvc_data `Tree.as_bytes`), as `dvc commit` records it in dvc.lock.
    """
    entries, size = [], 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        entries.append({"md5": file_md5(file), "relpath": file.relative_to(path).as_posix()})
        size += file.stat().st_size
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir", size, len(entries)


def values_hash(values: Any) -> str:
    """sha256 of a params document's values (comments and key order do not count)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def python_version() -> str:
    """The interpreter the stamp was written under (a new one is a new environment)."""
    return ".".join(str(part) for part in sys.version_info[:3])


def load_yaml(path: Path) -> Any:
    """A YAML file through the C loader when present (dvc.lock of a big project is ~100 kB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as handle:
        return yaml.load(handle, Loader=loader)


_MISSING = object()


def lookup(values: Any, dotted: str) -> Any:
    """The value at a dotted params key, or _MISSING."""
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# --- the stamp a completed run leaves ---


def tracking_uri_of(root: Path, values: Mapping[str, Any]) -> str:
    """The tracking URI the flow uses for these params values (tracking.tracking_uri, else the root's SQLite)."""
    uri = lookup(values, "tracking.tracking_uri")
    return str(uri) if uri not in (None, _MISSING) else default_tracking_uri(root)


def write_stamp(root: Path, summary: Mapping[str, Any]) -> bool:
    """After a completed default run: leave the stamp when its outcome allows a no-op, else remove any old one.

    Called under the workspace lock, after dvc.lock was written. Never raises (the run's outcome stands).
    """
    path = root / STAMP
    try:
        if summary.get("promotion") not in KEPT_ACTIONS or summary.get("dry_run"):
            path.unlink(missing_ok=True)
            return False
        values = load_yaml(root / PARAMS_FILE)
        lock = root / LOCK_FILE
        stamp = {
            "format": STAMP_FORMAT,
            "env": {"lock": file_md5(lock) if lock.exists() else "no-lock", "python": python_version()},
            "files": {name: file_md5(root / name) for name in ("dvc.yaml", "dvc.lock")},
            "params": values_hash(values),
            "champion_version": summary.get("champion_version"),
            "summary": {key: summary.get(key) for key in SUMMARY_KEYS},
            "mlflow_run_id": summary.get("mlflow_run_id"),
            "written_at": time.time(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp, indent=1, default=str))
        tmp.replace(path)
        return True
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        logger.warning("no-op stamp %s not written (the next unchanged run takes the full path): %s", path, exc)
        path.unlink(missing_ok=True)
        return False


def clear_stamp(root: Path) -> None:
    """Forget the stamp (a run that changes the workspace starts)."""
    (root / STAMP).unlink(missing_ok=True)


# --- the decision ---


@contextmanager
def workspace_free(root: Path) -> Iterator[None]:
    """Hold the workspace lock while checking (non-blocking); a run in progress means "changed"."""
    path = root / WORKSPACE_LOCK
    if not path.parent.is_dir():
        raise ChangedError(f"{path.parent} does not exist: no run recorded here")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ChangedError("another run holds the workspace lock") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class Hasher:
    """DVC hashes of workspace paths, each computed once per decision."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[str, tuple[str, int, int | None]] = {}
        self.files = 0

    def of(self, rel: str) -> tuple[str, int, int | None] | None:
        """(md5, size, nfiles or None for a file) of a path relative to the root; None when it does not exist."""
        if rel not in self.seen:
            path = self.root / rel
            if path.is_file():
                self.seen[rel] = (file_md5(path), path.stat().st_size, None)
                self.files += 1
            elif path.is_dir():
                md5, size, nfiles = dir_md5(path)
                self.seen[rel] = (md5, size, nfiles)
                self.files += nfiles
            else:
                return None
        return self.seen[rel]

    def check(self, stage: str, kind: str, entry: Mapping[str, Any]) -> None:
        """A dvc.lock dep or out entry still matches the workspace (DVC's md5)."""
        rel = entry.get("path")
        if not isinstance(rel, str) or entry.get("hash", "md5") != "md5" or "md5" not in entry:
            raise ChangedError(f"dvc.lock stage {stage}: {kind} entry {entry!r} is not a DVC 3 md5 entry")
        if Path(rel).is_absolute() or rel.startswith(".."):
            raise ChangedError(f"dvc.lock stage {stage}: {kind} {rel} is outside the workspace")
        found = self.of(rel)
        if found is None:
            raise ChangedError(f"stage {stage}: {kind} {rel} is missing")
        if found[0] != entry["md5"]:
            raise ChangedError(f"stage {stage}: {kind} {rel} changed (md5 {found[0]}, dvc.lock {entry['md5']})")


def resolve_template(path: str, values: Mapping[str, Any]) -> str:
    """A dvc.yaml `${section.key}` path filled from params.yaml (what DVC does); anything unusual is Changed."""
    if "${" not in path:
        return path
    if not (path.startswith("${") and path.endswith("}") and path.count("${") == 1):
        raise ChangedError(f"dvc.yaml: dep {path} is a template the fast path does not resolve")
    value = lookup(values, path[2:-1])
    if value in (None, _MISSING) or not isinstance(value, str):
        raise ChangedError(f"dvc.yaml: dep {path} resolves to {value!r}")
    return value


def entry_paths(entries: Any) -> set[str]:
    """The paths of a dvc.yaml deps / outs / metrics / plots list (plain strings or `{path: options}`)."""
    paths: set[str] = set()
    for entry in entries or []:
        if isinstance(entry, str):
            paths.add(entry)
        elif isinstance(entry, dict) and len(entry) == 1:
            paths.add(next(iter(entry)))
        else:
            raise ChangedError(f"dvc.yaml: entry {entry!r} is not a path")
    return paths


STAGE_KEYS = {"cmd", "deps", "params", "outs", "metrics", "plots"}
"""dvc.yaml stage keys the fast path understands (always_changed, frozen, foreach, vars...: the slow path)."""


def check_pipeline(dvc_yaml: Any, lock: Any, values: Mapping[str, Any]) -> None:
    """dvc.yaml's stage table is the one dvc.lock was written for: stages, commands, dep / out paths, params keys."""
    if not isinstance(dvc_yaml, dict) or set(dvc_yaml) - {"stages", "plots"}:
        raise ChangedError("dvc.yaml has top-level keys other than stages and plots")
    stages, locked = dvc_yaml.get("stages") or {}, (lock or {}).get("stages") or {}
    if (lock or {}).get("schema") != "2.0":
        raise ChangedError("dvc.lock is not a DVC 3 (schema 2.0) lock file")
    if set(stages) != set(locked):
        raise ChangedError(f"dvc.yaml stages {sorted(stages)} differ from dvc.lock's {sorted(locked)}")
    for name, stage in stages.items():
        if not isinstance(stage, dict) or set(stage) - STAGE_KEYS:
            raise ChangedError(
                f"dvc.yaml stage {name} has keys the fast path does not check: {sorted(set(stage) - STAGE_KEYS)}"
            )
        entry = locked[name]
        if stage.get("cmd") != entry.get("cmd"):
            raise ChangedError(
                f"stage {name}: command {stage.get('cmd')!r} differs from dvc.lock's {entry.get('cmd')!r}"
            )
        deps = {resolve_template(p, values) for p in entry_paths(stage.get("deps"))}
        if deps != {d.get("path") for d in entry.get("deps", [])}:
            raise ChangedError(f"stage {name}: dvc.yaml deps differ from the ones dvc.lock recorded")
        outs = entry_paths(stage.get("outs")) | entry_paths(stage.get("metrics")) | entry_paths(stage.get("plots"))
        if outs != {o.get("path") for o in entry.get("outs", [])}:
            raise ChangedError(f"stage {name}: dvc.yaml outs differ from the ones dvc.lock recorded")
        keys = stage.get("params") or []
        if not all(isinstance(k, str) for k in keys):
            raise ChangedError(f"stage {name}: params from another file than {PARAMS_FILE}")
        recorded = (entry.get("params") or {}).get(PARAMS_FILE) or {}
        if set(entry.get("params") or {}) - {PARAMS_FILE} or set(recorded) - set(keys):
            raise ChangedError(f"stage {name}: dvc.lock records params dvc.yaml does not declare")
        for key in keys:
            now = lookup(values, key)
            if key not in recorded:
                if now is not _MISSING:
                    raise ChangedError(f"params.yaml: {key} is new for stage {name}")
                continue
            if now is _MISSING or now != recorded[key]:
                shown = "missing" if now is _MISSING else json.dumps(now, default=str)[:80]
                raise ChangedError(f"params.yaml: {key} changed for stage {name} (now {shown})")


def check_stamp(root: Path, stamp: Mapping[str, Any], values: Any) -> None:
    """The environment, dvc.yaml, dvc.lock and the params values are the ones the recorded run had."""
    if stamp.get("format") != STAMP_FORMAT:
        raise ChangedError(f"{STAMP} is of another format")
    lock = root / LOCK_FILE
    env = {"lock": file_md5(lock) if lock.exists() else "no-lock", "python": python_version()}
    if stamp.get("env") != env:
        raise ChangedError(f"environment changed ({LOCK_FILE} or Python): was {stamp.get('env')}, now {env}")
    for name in ("dvc.yaml", "dvc.lock"):
        if (stamp.get("files") or {}).get(name) != file_md5(root / name):
            raise ChangedError(f"{name} changed since the last completed run")
    if stamp.get("params") != values_hash(values):
        raise ChangedError(f"{PARAMS_FILE}: a value changed since the last completed run")


def check_lineage(root: Path, lock: Mapping[str, Any], values: Mapping[str, Any], hasher: Hasher) -> None:
    """Every dvc.lock stage's deps and outs hash as recorded (its params were compared in check_pipeline)."""
    for name, entry in lock["stages"].items():
        for dep in entry.get("deps", []):
            hasher.check(name, "dep", dep)
        for out in entry.get("outs", []):
            hasher.check(name, "out", out)


def check_champion(root: Path, lock: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    """The registry is where the recorded run left it; returns the champion version."""
    promotion = json.loads((root / PROMOTION).read_text())
    action, version = promotion.get("action"), promotion.get("champion_version")
    if action not in KEPT_ACTIONS or version is None or promotion.get("challenger_version") != version:
        raise ChangedError(f"{PROMOTION}: the last promotion was {action} (a rerun's promote would act again)")
    uri = tracking_uri_of(root, values)  # a changed tracking.tracking_uri changed the params values (check_stamp)
    name, alias = lookup(values, "promote.model_name"), lookup(values, "promote.alias")
    if not isinstance(name, str) or not isinstance(alias, str) or promotion.get("model_name") != name:
        raise ChangedError("promote.model_name / promote.alias are not the ones the last promotion used")
    model_hash = str(promotion.get("model_hash"))
    try:
        seen = read_registry(uri, name, alias, model_hash)
    except UnreadableError as exc:
        raise ChangedError(str(exc)) from None
    if seen.champion != str(version):
        raise ChangedError(f"registry: {name}@{alias} is version {seen.champion}, the last run left version {version}")
    if seen.challenger != str(version):
        raise ChangedError(
            f"registry: {name}@{CHALLENGER} is version {seen.challenger}, promote would move it to {version}"
        )
    if seen.tags.get(MODEL_HASH_TAG) != model_hash or not seen.tags.get(MANIFEST_TAG):
        raise ChangedError(
            f"registry: {name} version {version} does not carry this workspace's sealed model {model_hash}"
        )
    snapshot = [o["md5"] for e in lock["stages"].values() for o in e.get("outs", []) if o.get("path") == SNAPSHOT]
    if seen.tags.get(DATA_HASH_TAG) not in snapshot:
        raise ChangedError(f"registry: {name} version {version} was not trained on this workspace's {SNAPSHOT}")
    if seen.same_hash != {str(version)}:
        raise ChangedError(f"registry: versions {sorted(seen.same_hash)} of {name} hold the same model")
    return str(version)


def decide(root: Path, params_file: str = PARAMS_FILE) -> Verdict:
    """Whether a default `retrain run` would change nothing; never raises (any error answers "changed")."""
    started = time.perf_counter()
    hasher = Hasher(root)
    try:
        if Path(params_file) not in (Path(PARAMS_FILE), root / PARAMS_FILE):
            raise ChangedError(f"--params {params_file}: only {PARAMS_FILE} runs record lineage")
        with workspace_free(root):
            stamp_path = root / STAMP
            if not stamp_path.is_file():
                raise ChangedError(f"no completed run recorded ({STAMP} absent)")
            stamp = json.loads(stamp_path.read_text())
            values = load_yaml(root / PARAMS_FILE)
            lock = load_yaml(root / "dvc.lock")
            check_pipeline(load_yaml(root / "dvc.yaml"), lock, values)
            check_lineage(root, lock, values, hasher)
            check_stamp(root, stamp, values)
            version = check_champion(root, lock, values)
    except ChangedError as exc:
        return Verdict(False, str(exc), time.perf_counter() - started, hasher.files)
    except Exception as exc:  # a file, a registry or a lineage it cannot read: the flow decides (never a false no-op)
        why = f"could not check the lineage ({type(exc).__name__}: {exc})"
        return Verdict(False, why, time.perf_counter() - started, hasher.files)
    seconds = time.perf_counter() - started
    stages = list(lock["stages"])
    reason = (
        f"{len(stages)} stages, {hasher.files} files re-hashed against dvc.lock, params, "
        f"{LOCK_FILE} and Python {python_version()} as recorded; champion is version {version}"
    )
    summary = noop_summary(stamp, stages, version, seconds) | {"tracking_uri": tracking_uri_of(root, values)}
    return Verdict(True, reason, seconds, hasher.files, version, summary)


def noop_summary(stamp: Mapping[str, Any], stages: list[str], version: str, seconds: float) -> dict[str, Any]:
    """The run summary of a no-op: flows/summary.py's keys, every stage cached, promotion `unchanged`."""
    last = dict(stamp.get("summary") or {})
    return {
        "stages": [{"name": name, "status": "cached", "seconds": 0.0} for name in stages],
        **last,
        "promotion": "unchanged",
        "promotion_message": f"nothing changed since the last run: version {version} stays champion",
        "dry_run": False,
        "model_version": version,
        "challenger_version": version,
        "champion_version": version,
        "audit": [],
        "recompared": None,
        "mlflow_run_id": None,
        "last_mlflow_run_id": stamp.get("mlflow_run_id"),
        "prefect_flow_run_id": None,
        "recovered": {},
        "noop": True,
        "seconds": round(seconds, 3),
    }
