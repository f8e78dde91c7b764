"""Preflight: every problem of a params file and its data, found at once, before anything heavy starts.

`retrain check`, `retrain run` and `retrain stage` call `preflight` before Prefect, MLflow or any model
library is imported. It reads the params (with hints for the classic YAML traps), looks at each declared
source (exists, right kind, header and a few thousand rows), infers the schema when `dataset.columns` is
null, and checks every column the params name — exclude, protected, slices, bands, heuristic, monotone,
directional, invariance, fairness, group / time columns, the test source — against the data. Each problem
carries its key path; the caller lists them all in one message (exit 2).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from retrain.config import (
    COLUMNS_CHECKED,
    OverrideError,
    Params,
    apply_overrides,
    override_origin,
    problem_key,
    read_params_file,
)
from retrain.data.sources import Source, engine_url, file_problem, glob_files, parse_source, resolve_path
from retrain.errors import ConfigError, RetrainInputError

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 5_000
"""Rows read from the start of each source: enough to see the header, the types and the labels, cheaply."""

SCAN_BYTES = 100_000_000
"""CSV files up to this size on disk get ingest's whole-file structure scan in preflight too."""

DEFAULT_MAX_BYTES = 2_000_000_000
"""ingest.max_bytes when the params leave it out (IngestConfig's default)."""

MAX_HEADER_FILES = 500
"""A glob's files whose headers are compared (all of them up to this many)."""

LABEL_KEYS = ("dataset.labels", "dataset.positive_label")
YAML_KINDS = {bool: "boolean", int: "number", float: "number"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, at one params key (or source), and the `--set` option it comes from, if any."""

    key: str
    message: str
    origin: str = ""
    """`--set K=V` when a command-line override caused it (named first: the file is not at fault)."""

    def __str__(self) -> str:
        text = self.message if self.message.startswith(self.key) else f"{self.key}: {self.message}"
        return f"{self.origin}: {text}" if self.origin and self.origin != self.key else text


@dataclass(frozen=True)
class ColumnRef:
    """A params key that names columns, and what those columns must be."""

    key: str
    need: str
    """`column` (any column of the source), `feature` (a model input) or `numeric` (a numeric feature)."""


COLUMN_REFS: tuple[ColumnRef, ...] = (
    ColumnRef("dataset.target", "column"),
    ColumnRef("dataset.exclude", "column"),
    ColumnRef("dataset.columns", "column"),
    ColumnRef("dataset.protected", "feature"),
    ColumnRef("dataset.slices", "feature"),
    ColumnRef("split.group_column", "column"),
    ColumnRef("split.time_column", "column"),
    ColumnRef("baselines.heuristic.column", "feature"),
    ColumnRef("candidates.monotone", "numeric"),
    ColumnRef("evaluate.gates.slices.columns", "feature"),
    ColumnRef("evaluate.gates.slices.bands", "numeric"),
    ColumnRef("evaluate.gates.invariance.attributes", "feature"),
    ColumnRef("evaluate.gates.directional.increasing", "numeric"),
    ColumnRef("evaluate.gates.directional.decreasing", "numeric"),
    ColumnRef("evaluate.gates.fairness.attributes", "feature"),
)
"""Every params key that names columns (docs/config: "Column references"); preflight checks each one."""


@dataclass
class Report:
    """What preflight found: the problems, notes worth logging, and the validated params when they parse."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: Params | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def message(self, params_file: str) -> str:
        """All problems in one message, one per line, each with its key path (and `--set` option, if from one)."""
        count = len(self.problems)
        lines = "\n  ".join(str(p) for p in self.problems)
        noun = "problem" if count == 1 else "problems"
        subject = params_file
        if self.overrides and all(p.origin for p in self.problems):
            subject = f"the --set option{'s' if len(self.overrides) > 1 else ''}, not {params_file}"
        elif any(p.origin for p in self.problems):
            subject = f"{params_file} and its --set options"
        return f"{subject}: {count} {noun} found before anything ran (nothing was written):\n  {lines}"


def get_path(raw: Any, key: str) -> Any:
    """The raw value at a dotted key, None where any part is missing."""
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def named_columns(value: Any) -> list[str]:
    """Column names held by a raw params value: a name, a list of names, or a mapping keyed by name."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value if isinstance(v, str | int | float)]
    if isinstance(value, str):
        return [value]
    return []


def label_hints(raw: dict[str, Any]) -> list[Problem]:
    """Labels written as YAML numbers or booleans: ingest reads labels as text, so they must be quoted."""
    problems = []
    for key in LABEL_KEYS:
        value = get_path(raw, key)
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v is not None and not isinstance(v, str)]
        if bad:
            shown = ", ".join(json.dumps(str(v).lower() if isinstance(v, bool) else str(v)) for v in bad)
            problems.append(
                Problem(
                    key,
                    f"{', '.join(map(str, bad))} is read by YAML as a {YAML_KINDS.get(type(bad[0]), 'value')}, but "
                    f"labels are text after ingest: quote it ({shown})",
                )
            )
    return problems


def attributed(problems: list[Problem], overrides: list[str], caused: set[tuple[str, str]]) -> list[Problem]:
    """Each problem with the `--set` option it comes from.

    A problem at a key an option sets (or, across keys, named in its message) is that option's; any other
    problem in `caused` (params problems the file alone does not have) is the options' together.
    """
    out = []
    for p in problems:
        origin = override_origin(p.key, p.message, overrides) or ""
        if not origin and (p.key, p.message) in caused:
            origin = " ".join(f"--set {text}" for text in overrides)
        out.append(Problem(p.key, p.message, origin))
    return out


def schema_problems(exc: ValidationError, skip_keys: set[str]) -> list[Problem]:
    """pydantic's errors as problems with key paths (those already explained by a hint are left out)."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        key = problem_key(error["loc"], message)
        if key in skip_keys:
            continue
        if error["type"] == "missing":
            message = "required (no default): add it"
        elif error["type"] == "extra_forbidden":
            message = "unknown key (a typo?); see params.yaml's comments for the keys of this section"
        problems.append(Problem(key, message))
    return problems


# --- reading a sample of each source ---------------------------------------------------------------


@dataclass
class Sample:
    """A source's header and first rows, as ingest would type them."""

    where: str
    header: list[str]
    frame: Any  # pandas.DataFrame


def _read_csv_sample(path: Path, ingest: dict[str, Any]) -> Sample:
    """The header and first rows of a CSV, with ingest's parsing options.

    A file up to SCAN_BYTES is first scanned whole by ingest's own structure scan (empty file, wrong
    delimiter, a short row, an open quote: ingest's messages, line numbers included) — a fraction of a
    second on Adult; a bigger one is scanned by ingest only.
    """
    import pandas as pd

    from retrain.data.ingest import check_size, scan_csv

    delimiter = str(ingest.get("delimiter") or ",")
    max_bytes = int(ingest.get("max_bytes") or DEFAULT_MAX_BYTES)
    check_size(path, max_bytes)
    header = scan_csv(path, delimiter, max_bytes).header if path.stat().st_size <= SCAN_BYTES else None
    frame = pd.read_csv(
        path,
        sep=delimiter,
        nrows=SAMPLE_ROWS,
        na_values=list(ingest.get("na_values") or ("?",)),
        keep_default_na=False,
        skipinitialspace=True,
        encoding="utf-8-sig",
    )
    # the raw header (pandas renames a repeated name to `x.1`, which would hide it from the contract check)
    header = header or first_line_header(path, delimiter) or [str(c) for c in frame.columns]
    return Sample(str(path), header, frame)


def _read_parquet_sample(path: Path) -> Sample:
    """The schema and first record batch of a Parquet file."""
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    batch = next(handle.iter_batches(batch_size=SAMPLE_ROWS), None)
    frame = batch.to_pandas() if batch is not None else handle.schema_arrow.empty_table().to_pandas()
    return Sample(str(path), [str(c) for c in handle.schema_arrow.names], frame)


def _read_file_sample(path: Path, ingest: dict[str, Any]) -> Sample:
    """Dispatch on the suffix, as ingest does."""
    if ".parquet" in "".join(path.suffixes[-2:]).lower():
        return _read_parquet_sample(path)
    return _read_csv_sample(path, ingest)


def _read_sql_sample(root: Path, source: Source) -> Sample:
    """The first rows of the query's result (streamed: the rest is never fetched)."""
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(engine_url(root, source))
    try:
        with engine.connect() as conn:
            streaming = conn.execution_options(stream_results=True, max_row_buffer=SAMPLE_ROWS)
            chunks: Iterator[pd.DataFrame] = pd.read_sql_query(
                sa.text(source.query or ""), streaming, chunksize=SAMPLE_ROWS
            )
            frame = next(iter(chunks), pd.DataFrame())
    finally:
        engine.dispose()
    return Sample(f"{source.spec} (query)", [str(c) for c in frame.columns], frame)


def first_line_header(path: Path, delimiter: str) -> list[str] | None:
    """A CSV file's header from its first line only (None for Parquet or an unreadable file)."""
    import csv

    from retrain.data.ingest import open_text

    if ".parquet" in "".join(path.suffixes[-2:]).lower():
        return None
    try:
        with open_text(path) as handle:
            row = next(csv.reader(handle, delimiter=delimiter), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return [c.strip() for c in row]


def sample_source(
    root: Path, key: str, spec: Any, query: Any, ingest: dict[str, Any]
) -> tuple[Sample | None, list[Problem]]:
    """Check one declared source and read its sample; a problem (not an exception) for whatever is wrong."""
    if not isinstance(spec, str) or not spec:
        return None, []  # a missing / mistyped source is already a schema problem
    source = parse_source(spec, query if isinstance(query, str) else None)
    try:
        if source.kind == "sql":
            if not source.query:
                return None, []  # "set ingest.query" is a schema problem
            return _read_sql_sample(root, source), []
        if source.kind == "glob":
            files = glob_files(root, spec)
            if not files:
                return None, [
                    Problem(key, f"the glob {spec!r} matches no files (under {resolve_path(root, spec).parent})")
                ]
            sample = _read_file_sample(files[0], ingest)
            sample.where = f"{spec} ({files[0].name}, first of {len(files)} files)"
            problems = []
            delimiter = str(ingest.get("delimiter") or ",")
            for other in files[1 : MAX_HEADER_FILES + 1]:
                header = first_line_header(other, delimiter)
                if header is not None and header != sample.header:
                    missing = [c for c in sample.header if c not in header]
                    extra = [c for c in header if c not in sample.header]
                    problems.append(
                        Problem(key, f"{other} has other columns than {files[0]} (missing {missing}, extra {extra})")
                    )
            return sample, problems
        path = resolve_path(root, spec)
        problem = file_problem(root, spec)
        if problem is not None:
            return None, [Problem(key, problem)]
        sample = _read_file_sample(path, ingest)
        sample.where = spec
        return sample, []
    except RetrainInputError as exc:
        return None, [Problem(key, str(exc))]
    except Exception as exc:  # unreadable data of any kind is a problem to report with the others
        return None, [Problem(key, f"{spec!r} cannot be read: {type(exc).__name__}: {exc}")]


# --- column references ------------------------------------------------------------------------------


def numeric_columns(sample: Sample, raw_columns: Any) -> set[str]:
    """Numeric columns: declared int/float, or (no schema declared) numeric in the sample."""
    import pandas as pd

    if isinstance(raw_columns, dict):
        return {str(c) for c, s in raw_columns.items() if isinstance(s, dict) and s.get("type") in ("int", "float")}
    return {str(c) for c in sample.frame.columns if pd.api.types.is_numeric_dtype(sample.frame[c].dtype)}


def _close(name: str, choices: list[str]) -> str:
    """` (did you mean 'x'?)` for a near miss."""
    import difflib

    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


def contract_problems(params: Params, samples: dict[str, Sample]) -> list[Problem]:
    """Each source's header against ingest's own column contract (same rule, same message as ingest)."""
    from retrain.data.ingest import Contract

    contract = Contract.of(params.dataset, params.split.extra_columns)
    problems = []
    for key, sample in samples.items():
        try:
            contract.check(sample.where, sample.header, None)
        except RetrainInputError as exc:
            problems.append(Problem(key, str(exc)))
    return problems


def column_problems(raw: dict[str, Any], sample: Sample, skip: tuple[str, ...] = ()) -> list[Problem]:
    """Every column reference of the params checked against the source's header (and types)."""
    header = sample.header
    target = get_path(raw, "dataset.target")
    excluded = set(named_columns(get_path(raw, "dataset.exclude")))
    extra = set(named_columns(get_path(raw, "split.group_column")) + named_columns(get_path(raw, "split.time_column")))
    raw_columns = get_path(raw, "dataset.columns")
    if isinstance(raw_columns, dict):
        features = [str(c) for c in raw_columns if str(c) in header]
    else:
        features = [c for c in header if c != target and c not in excluded and c not in extra]
    numeric = numeric_columns(sample, raw_columns)
    problems = []
    for ref in COLUMN_REFS:
        if ref.key in skip:
            continue
        names = named_columns(get_path(raw, ref.key))
        missing = [c for c in names if c not in header]
        if missing:
            shown = ", ".join(f"{c!r}{_close(c, header)}" for c in missing)
            problems.append(Problem(ref.key, f"{shown} not a column of {sample.where} (columns: {', '.join(header)})"))
        present = [c for c in names if c in header]
        if ref.need in ("feature", "numeric"):
            not_features = [c for c in present if c not in features]
            if not_features:
                why = "the target, excluded, a group/time column or not declared in dataset.columns"
                problems.append(Problem(ref.key, f"{not_features} are not features ({why})"))
            present = [c for c in present if c in features]
        if ref.need == "numeric":
            categorical = [c for c in present if c not in numeric]
            if categorical:
                problems.append(Problem(ref.key, f"{categorical} are not numeric; this key takes numeric columns only"))
    return problems


def label_problems(raw: dict[str, Any], sample: Sample) -> list[Problem]:
    """Declared labels against the target values of the sample (after ingest's suffix strip)."""
    labels = get_path(raw, "dataset.labels")
    target = get_path(raw, "dataset.target")
    task = get_path(raw, "dataset.task")
    if task == "regression" or not isinstance(target, str) or target not in sample.frame.columns:
        return []
    suffix = str(get_path(raw, "ingest.label_suffix") or "")
    values = sample.frame[target].dropna().astype(str).str.strip()
    if suffix:
        values = values.str.removesuffix(suffix)
    seen = sorted(set(values))
    if isinstance(labels, list) and all(isinstance(v, str) for v in labels):
        unknown = [v for v in seen if v not in labels]
        if unknown:
            return [
                Problem(
                    "dataset.labels",
                    f"{sample.where} holds target values {unknown[:10]} not in {labels} "
                    f"(first {SAMPLE_ROWS:,} rows; is ingest.label_suffix or the labels' spelling right?)",
                )
            ]
    return []


def source_specs(raw: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, spec, query) of the main and test sources."""
    return [
        ("ingest.source", get_path(raw, "ingest.source"), get_path(raw, "ingest.query")),
        ("ingest.test_source", get_path(raw, "ingest.test_source"), get_path(raw, "ingest.test_query")),
    ]


def test_source_problems(raw: dict[str, Any], main: Sample, test: Sample) -> list[Problem]:
    """The test source must hold the main source's target and features."""
    target = get_path(raw, "dataset.target")
    excluded = set(named_columns(get_path(raw, "dataset.exclude")))
    needed = [c for c in main.header if c not in excluded]
    missing = [c for c in needed if c not in test.header]
    if not missing:
        return []
    role = "the target" if target in missing else "columns"
    return [Problem("ingest.test_source", f"{test.where} lacks {role} {missing} that {main.where} has")]


def preflight(params_file: Path, root: Path, overrides: list[str] | None = None) -> Report:
    """Every problem of the params file and its data, at once (see the module docstring)."""
    overrides = overrides or []
    report = Report(overrides=list(overrides))
    try:
        from_file = read_params_file(params_file)
    except ConfigError as exc:
        report.problems.append(Problem("params", str(exc)))
        return report
    bad_options: list[OverrideError] = []
    raw = apply_overrides(from_file, overrides, bad_options)
    hints = label_hints(raw)
    problems = list(hints)
    raw_ingest = get_path(raw, "ingest")
    ingest = raw_ingest if isinstance(raw_ingest, dict) else {}
    samples: dict[str, Sample] = {}
    for key, spec, query in source_specs(raw):
        sample, found = sample_source(root, key, spec, query, ingest)
        problems += found
        if sample is not None:
            samples[key] = sample
            report.sources[key] = {"where": sample.where, "columns": len(sample.header), "rows_read": len(sample.frame)}
    main = samples.get("ingest.source")
    caused: set[tuple[str, str]] = set()
    try:  # with the data at hand, column references are checked against it below (not twice)
        report.params = Params.model_validate(raw, context={COLUMNS_CHECKED: main is not None})
    except ValidationError as exc:
        schema = schema_problems(exc, {p.key for p in hints})
        problems += schema
        if overrides:
            caused = {(p.key, p.message) for p in schema} - file_schema_problems(from_file, main is not None)
    if main is not None:
        contract = contract_problems(report.params, samples) if report.params is not None else None
        skip = ("dataset.columns", "dataset.target") if contract is not None else ()
        problems += (contract or []) + column_problems(raw, main, skip) + label_problems(raw, main)
        if "ingest.test_source" in samples and not contract:
            problems += test_source_problems(raw, main, samples["ingest.test_source"])
    options = [Problem(f"--set {e.text}", e.reason, f"--set {e.text}") for e in bad_options]
    report.problems = options + attributed(_unique(problems), overrides, caused)
    if report.problems:
        report.params = None
    return report


def file_schema_problems(from_file: dict[str, Any], columns_checked: bool) -> set[tuple[str, str]]:
    """The params file's own schema problems, without the `--set` options (to tell which problems they cause)."""
    try:
        Params.model_validate(from_file, context={COLUMNS_CHECKED: columns_checked})
    except ValidationError as exc:
        return {(p.key, p.message) for p in schema_problems(exc, set())}
    return set()


def _unique(problems: list[Problem]) -> list[Problem]:
    """Problems in order, each once."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.key, p.message) not in seen:
            seen.add((p.key, p.message))
            out.append(p)
    return out


def resolved_yaml(params: Params) -> str:
    """The params as validated, defaults filled in (what `retrain check --show` prints)."""
    from retrain.config import params_dict

    return yaml.safe_dump(params_dict(params), sort_keys=False, width=110)
