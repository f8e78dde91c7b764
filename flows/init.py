"""`retrain init DATA --target COL`: profile a table and write a complete, commented params file for it.

The table is read exactly as the ingest stage reads it (retrain/data/profile.py), a reference LightGBM is timed
on this machine for the latency budget (retrain/evaluation/reference.py), and the file is rendered from a
template (retrain/data/paramsfile.py) and checked to load before it is written (atomically: a temp file, then
os.replace). docs/init.md describes every value it writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any

from retrain.errors import ConfigError

logger = logging.getLogger(__name__)

DATA_SUFFIXES = frozenset(
    {".csv", ".tsv", ".txt", ".gz", ".bz2", ".zip", ".xz", ".parquet", ".pq", ".db", ".sqlite", ".sqlite3"}
)
"""Suffixes stripped from a data file's name to get the stem (adult_train.csv.gz -> adult_train)."""

EPILOG = """\
examples:
  retrain init data/source/adult_train.csv.gz --target income --protected sex race
  retrain init data/source/california_housing.csv.gz --target median_house_value --name california
  retrain init 'data/batches/*.csv' --target churned --time-column signup_date
  retrain init sqlite:///data/source/shop.db --query 'SELECT * FROM orders' --target returned --group-column customer_id
  retrain run --params params.adult_train.yaml

DATA is read relative to the current directory; the params file records it relative to the project root
(absolute when it lies outside). The file is checked to load before it is written; nothing is written on an
error (exit 2: bad data or arguments).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `init` subcommand and its options, on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "init",
        help="profile a table and write a commented params file for it",
        description=(
            "Reads DATA as the ingest stage does, infers the task and the schema, flags identifier-like, constant "
            "and suspiciously predictive columns, measures a reference model's latency here, and writes a params "
            "file whose every threshold is relative to the data or a documented generic default (docs/init.md)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DATA", help="a CSV (.gz) / Parquet file, a quoted glob, or a SQLAlchemy URL")
    parser.add_argument("--target", required=True, help="the column to predict")
    parser.add_argument(
        "--task", choices=("binary", "multiclass", "regression"), default=None, help="default: inferred from the target"
    )
    parser.add_argument("--positive", default=None, help="binary: the positive label (default: the minority class)")
    parser.add_argument("--protected", nargs="+", default=[], metavar="COL", help="protected attributes (fairness)")
    parser.add_argument("--time-column", default=None, metavar="COL", help="split by time on this column")
    parser.add_argument("--group-column", default=None, metavar="COL", help="keep rows of a group in one split")
    parser.add_argument("--query", default=None, metavar="SQL", help="the SELECT to run when DATA is a database URL")
    parser.add_argument("--name", default=None, help="dataset name (default: the data file's stem)")
    parser.add_argument("--output", default=None, metavar="FILE", help="default: params.<stem>.yaml here")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    return parser


def data_stem(data: str) -> str:
    """A name from DATA: the file name without data suffixes, a glob's folder, or the database's name."""
    from retrain.data.sources import glob_folder, parse_source

    source = parse_source(data)
    if source.kind == "sql":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            database = make_url(data).database or ""
        except ArgumentError:
            database = ""
        stem = Path(database).name
    elif source.kind == "glob":
        stem = Path(glob_folder(data)).name
    else:
        stem = Path(data).name
    while Path(stem).suffix.lower() in DATA_SUFFIXES:
        stem = Path(stem).stem
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")
    return cleaned or "data"


def _portable(path: Path, root: Path) -> str:
    """A path relative to the project root when it lies inside it, else absolute."""
    absolute = Path(os.path.normpath(path))
    return str(absolute.relative_to(root)) if absolute.is_relative_to(root) else str(absolute)


def params_source(data: str, cwd: Path, root: Path) -> str:
    """DATA as the params file must name it: ingest resolves relative paths (and SQLite files) from the root."""
    from retrain.data.sources import parse_source, sqlite_file

    source = parse_source(data)
    if source.kind != "sql":
        return _portable(cwd / data, root)
    if not source.is_sqlite:
        return data
    path = sqlite_file(cwd, data)
    if path is None:
        return data
    driver, rest = data.split("://", 1)
    options = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    return f"{driver}:///{_portable(path, root)}{options}"


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (reconstructed; a URL's password masked), for the file's header."""
    from retrain.data.sources import display

    parts = ["retrain", "init", display(args.data), "--target", args.target]
    for flag in ("task", "positive", "time_column", "group_column", "query", "name", "output"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", value]
    if args.protected:
        parts += ["--protected", *args.protected]
    return shlex.join(parts)


def output_path(args: argparse.Namespace, cwd: Path) -> Path:
    """Where the file goes; an existing file is refused unless --force."""
    path = Path(args.output) if args.output else Path(f"params.{data_stem(args.data)}.yaml")
    path = path if path.is_absolute() else cwd / path
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists; pass --force to overwrite it (or --output another file)")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} is not a file")
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write via a temp file beside the target and os.replace, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summary_line(path: Path, profile: Any, latency: dict[str, Any] | None) -> str:
    """One line: what was written, the task and why, excluded and flagged columns, NA markers, reference p95."""
    target = profile.target
    how = f"inferred: {target.task_reason}" if target.inferred else "given"
    excluded = ", ".join(f"{c.name} ({(c.exclude_reason or '').split(':')[0]})" for c in profile.excluded) or "none"
    flagged = ", ".join(f"{c.name} ({profile.leakage_metric} {c.score:.3f})" for c in profile.flagged()) or "none"
    reference = f"; reference p50 {latency['p50_ms']:.3f} ms" if latency else ""
    return (
        f"wrote {path}: {target.task} task ({how}) on {target.name!r}, {len(profile.features)} features from "
        f"{profile.rows:,} rows; excluded: {excluded}; flagged: {flagged}; na_values: {list(profile.na_values)}"
        f"{reference}"
    )


def cmd_init(args: argparse.Namespace) -> int:
    """Profile DATA and write the params file; ConfigError / DataError (exit 2) on bad input, nothing written."""
    from retrain.data.paramsfile import render_params
    from retrain.data.profile import profile_table
    from retrain.data.sources import display
    from retrain.evaluation.reference import reference_latency
    from retrain.paths import project_root

    cwd = Path.cwd().resolve()
    root = project_root()
    path = output_path(args, cwd)
    name = args.name or data_stem(args.data)
    profile = profile_table(
        args.data,
        target=args.target,
        root=cwd,
        query=args.query,
        task=args.task,
        positive=args.positive,
        protected=tuple(args.protected),
        time_column=args.time_column,
        group_column=args.group_column,
    )
    latency: dict[str, Any] | None = reference_latency(profile.frame, profile.dataset(), seed=42)
    source = params_source(args.data, cwd, root)
    if display(source) != source:
        logger.warning("%s: the URL holds a password, now in %s; prefer PGPASSWORD or ~/.pgpass", display(source), path)
    text = render_params(
        profile, name=name, source=source, query=args.query, latency=latency, command=command_line(args)
    )
    write_atomically(path, text)
    logger.info("%s", summary_line(path, profile, latency))
    return 0
