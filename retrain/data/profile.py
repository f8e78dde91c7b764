"""Profile a table for `retrain init`: read it exactly as ingest does, then describe what a params file needs.

The table is read through retrain/data/ingest.py (the same raw CSV scan, parsing, NA markers, type
settling and label normalisation), so the types, label strings and nulls seen here are those ingest will
produce from the params file `retrain init` writes. Two reads at most: the first with no NA markers finds
placeholder tokens (`?`, empty fields, `N/A`, ...), the second reads with the markers found and the task
inferred. Large tables are profiled on a seeded sample.

The result is a `Profile`: per column its type, range, category values, null share, whether it is excluded
(identifier, constant, dates as text) and why, and its single-feature score against the target
(retrain/data/leakage.py, the data gate's own leakage check). No Prefect, MLflow or model code here;
the params text is rendered from a Profile by retrain/data/paramsfile.py.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from retrain.config import ColumnSpec, DatasetConfig, IngestConfig, Task
from retrain.data.ingest import (
    OTHER_DELIMITERS,
    Contract,
    Reference,
    check_total_size,
    data_size,
    normalise_labels,
    open_text,
    read_source,
    sample,
)
from retrain.data.sources import Source, display, glob_files, parse_source, resolve_path
from retrain.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SEED = 42
"""Seed of the profiling sample and of the single-feature scores (params.yaml's default seed)."""
MAX_PROFILE_ROWS = 200_000
"""Larger tables are profiled on a seeded sample of this many labelled rows (the leakage check's own cap)."""
MAX_BYTES = 2_000_000_000
"""Size cap while profiling (IngestConfig's default); the params file gets its own, relative cap."""
MAX_CLASSES = 30
"""A target with more distinct values than this is not inferred as multiclass (numbers: regression)."""
MAX_DOMAIN = 50
"""Category columns with at most this many distinct values get their values as `domain`."""
ID_SHARE = 0.95
"""A text or integer column with distinct values in at least this share of its rows is identifier-like."""
MIN_ID_ROWS = 50
"""Below this many non-null rows, uniqueness says nothing: no column is called an identifier."""
ID_SPAN_FACTOR = 10
"""An integer column is identifier-like when near-unique and its range spans at most this x its rows (or its
name says id/key/...): a row number or a key drawn from a range, not a measurement spread over a wide one."""
LOOK_LEVEL = 0.95
"""Single-feature scores at or above this (but under validate.leakage_threshold) are flagged for a look."""
PLACEHOLDERS = frozenset(
    {"", "?", "??", "-", "--", ".", "NA", "N/A", "n/a", "na", "NaN", "nan", "NULL", "null", "None", "none", "#N/A"}
)
"""Text that commonly stands for a missing value; see `na_markers` for when one is declared a marker."""
ID_NAME = re.compile(r"(?:^|[_\-\s.])(?:id|key|uuid|guid|idx|index)$|[a-z](?:Id|ID)$|^(?:row|rownum|row_number)$", re.I)
"""Column names that say "identifier"."""
DATE_TEXT = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
    r"|^\d{1,2}/\d{1,2}/\d{2,4}(?: \d{1,2}:\d{2}(?::\d{2})?)?$"
)
"""ISO-like dates and day/month/year dates written as text."""
LABEL_SUFFIXES = (".",)
"""Trailing marks that may be stripped from labels (UCI's test labels end in '.'): see `label_suffix`."""
DATE_CHECKED = 1_000
"""Values looked at to decide whether a text column holds dates."""

Kind = Literal["int", "float", "category"]


@dataclass(frozen=True)
class ColumnProfile:
    """One column of the table (not the target, not the split column): what it holds and what init decides."""

    name: str
    kind: Kind
    null_fraction: float
    distinct: int
    minimum: float | None = None
    maximum: float | None = None
    values: tuple[str, ...] | None = None
    """Category values, most frequent first, when there are at most MAX_DOMAIN of them."""
    rarest: tuple[str, int] | None = None
    exclude_reason: str | None = None
    id_name: bool = False
    score: float | None = None
    """Held-out single-feature score against the target (retrain/data/leakage.py), None if not scored."""

    @property
    def excluded(self) -> bool:
        """Dropped at ingest (dataset.exclude)."""
        return self.exclude_reason is not None

    @property
    def numeric(self) -> bool:
        """An int or float column."""
        return self.kind != "category"


@dataclass(frozen=True)
class TargetProfile:
    """The target: task (given or inferred, and why), labels and their counts, or the numbers' spread."""

    name: str
    task: Task
    task_reason: str
    inferred: bool
    missing: int
    labels: tuple[str, ...] | None = None
    counts: dict[str, int] | None = None
    positive_label: str | None = None
    positive_reason: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    std: float | None = None

    @property
    def smallest_class_share(self) -> float | None:
        """Share of labelled rows in the rarest class (classification)."""
        if not self.counts:
            return None
        return min(self.counts.values()) / sum(self.counts.values())


@dataclass(frozen=True)
class SplitColumn:
    """The column `split` orders by (time) or keeps whole (group), with a one-line description."""

    role: Literal["time", "group"]
    name: str
    note: str


@dataclass
class Profile:
    """Everything retrain/data/paramsfile.py needs to write a params file for one table."""

    source: str
    query: str | None
    kind: str
    delimiter: str
    na_values: tuple[str, ...]
    na_found: dict[str, tuple[str, ...]]
    """Each NA marker found -> the columns it was found in."""
    label_suffix: str
    rows: int
    """Rows read (every source row, before dropping unlabelled rows and before sampling)."""
    profiled_rows: int
    data_bytes: int
    duplicate_fraction: float
    target: TargetProfile
    columns: tuple[ColumnProfile, ...]
    protected: tuple[str, ...]
    split_column: SplitColumn | None
    leakage_metric: str
    leakage_threshold: float
    leakage_skipped: str | None
    frame: pd.DataFrame = field(repr=False)
    """The profiled rows (labelled, sampled when large), as ingest types them, excluded columns dropped."""

    @property
    def labelled_rows(self) -> int:
        """Rows with a target value (what the snapshot holds once unlabelled rows are dropped)."""
        return self.rows - self.target.missing

    @property
    def features(self) -> list[ColumnProfile]:
        """The columns kept as model inputs, in table order."""
        return [c for c in self.columns if not c.excluded]

    @property
    def excluded(self) -> list[ColumnProfile]:
        """The columns dropped at ingest, in table order."""
        return [c for c in self.columns if c.excluded]

    def column(self, name: str) -> ColumnProfile:
        """One column's profile by name."""
        return next(c for c in self.columns if c.name == name)

    def flagged(self, threshold: float | None = None) -> list[ColumnProfile]:
        """Features whose single-feature score reaches `threshold` (default LOOK_LEVEL), best first."""
        level = LOOK_LEVEL if threshold is None else threshold
        hits = [c for c in self.features if c.score is not None and c.score >= level]
        return sorted(hits, key=lambda c: -(c.score or 0.0))

    def dataset(self, name: str = "profile") -> DatasetConfig:
        """The dataset as a DatasetConfig (types, labels, positive label): what leakage and the reference model use."""
        return DatasetConfig(
            name=name,
            task=self.target.task,
            target=self.target.name,
            labels=self.target.labels,
            positive_label=self.target.positive_label,
            columns={c.name: ColumnSpec(type=c.kind) for c in self.features},
            exclude=tuple(c.name for c in self.excluded),
        )


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _InitContract(Contract):
    """Ingest's column contract, failing with the table's columns when a named column is not one of them."""

    def check(self, where: str, header: list[str], reference: Reference | None) -> list[str]:
        """Named columns first (listing every column), then ingest's own checks."""
        missing = [c for c in self.required if c not in header]
        if missing:
            raise ConfigError(f"{where}: no column {', '.join(map(repr, missing))}; the columns are {header}")
        return super().check(where, header, reference)


def sniff_delimiter(path: Path) -> str:
    """The delimiter that splits a CSV header into the most fields (',' when nothing beats it)."""
    if ".parquet" in "".join(path.suffixes[-2:]).lower() or not path.is_file():
        return ","
    try:
        with open_text(path) as handle:
            line = handle.readline()
    except (OSError, UnicodeDecodeError, EOFError):
        return ","  # the real read reports the problem with its file and line
    widths = {d: len(next(csv.reader([line], delimiter=d), [])) for d in OTHER_DELIMITERS}
    best = max(widths, key=lambda d: (widths[d], d == ","))
    return best if widths[best] > 1 else ","


def _first_file(root: Path, source: Source) -> Path | None:
    """The file whose header names the columns (the first batch of a glob), None for SQL."""
    if source.kind == "sql":
        return None
    if source.kind == "glob":
        files = glob_files(root, source.spec)
        return files[0] if files else None
    return resolve_path(root, source.spec)


def _read(source: Source, root: Path, cfg: IngestConfig, dataset: DatasetConfig, keep: tuple[str, ...]) -> pd.DataFrame:
    """Every row of the source as ingest reads it (labels normalised for classification)."""
    contract = _InitContract(None, (dataset.target, *keep), ())
    frame = read_source(source, root, cfg, dataset, contract)[0].frame
    if dataset.is_classification:
        frame = normalise_labels(frame, dataset.target, cfg.label_suffix)
    return frame


def _raw_frames(
    source: Source, root: Path, cfg: IngestConfig, dataset: DatasetConfig, keep: tuple[str, ...]
) -> list[pd.DataFrame]:
    """The first read, with no NA markers: one frame per batch file (each read on its own), or the whole source.

    Batches are read apart here because, without markers, a placeholder in a later batch's numeric column
    would fail ingest's cross-batch type check before the marker could be found.
    """
    if source.kind != "glob":
        return [_read(source, root, cfg, dataset, keep)]
    files = glob_files(root, source.spec)
    if not files:
        raise DataError(f"{source.spec}: the glob matches no files")
    check_total_size(source.spec, files, cfg.max_bytes)
    return [_read(Source("file", str(path)), root, cfg, dataset, keep) for path in files]


# --- NA markers ------------------------------------------------------------------------------------


def _is_text(column: pd.Series) -> bool:
    """A text column as ingest leaves it (object or pandas `str`)."""
    return column.dtype == object or pd.api.types.is_string_dtype(column.dtype)


def na_markers(frames: Sequence[pd.DataFrame]) -> dict[str, tuple[str, ...]]:
    """Placeholder tokens to declare as `ingest.na_values`, each with the columns it was found in.

    A token of PLACEHOLDERS found in a text column is declared when it is empty or punctuation only (`?`,
    `-`, ``), when the column's other values are all numbers (the token is what keeps it from being
    numeric), or when it appears in two columns or more. A word such as `None` or `NA` alone in one text
    column is left as a value: it may be a real category.
    """
    found: dict[str, set[str]] = {}
    numeric_hit: set[str] = set()
    for frame in frames:
        for name in frame.columns:
            column = frame[name]
            if not _is_text(column):
                continue
            present = column.dropna()
            hits = present.isin(PLACEHOLDERS)
            if not hits.any():
                continue
            rest = present[~hits]
            numbers = pd.to_numeric(rest.astype("object"), errors="coerce")
            otherwise_numeric = len(rest) > 0 and bool(numbers.notna().all())
            for token in present[hits].unique():
                found.setdefault(str(token), set()).add(str(name))
                if otherwise_numeric:
                    numeric_hit.add(str(token))
    markers = {
        token: tuple(sorted(columns))
        for token, columns in found.items()
        if not token.strip("?-.#/ ") or token in numeric_hit or len(columns) >= 2
    }
    return dict(sorted(markers.items()))


# --- the target ------------------------------------------------------------------------------------


def _numbers(values: pd.Series) -> pd.Series | None:
    """The values as floats when every one is a finite number, else None."""
    parsed = pd.to_numeric(values.astype("object"), errors="coerce")
    if parsed.isna().any() or not np.isfinite(parsed.to_numpy(dtype=float)).all():
        return None
    return parsed.astype(float)


def infer_task(values: pd.Series, name: str) -> tuple[Task, str]:
    """Binary, multiclass or regression from the target's labelled values, and the reason in words."""
    distinct = values.nunique()
    if distinct < 2:
        shown = values.unique()[:1].tolist()
        raise DataError(f"target {name!r} has {distinct} distinct value(s) {shown}: nothing to learn")
    numbers = _numbers(values)
    if distinct == 2:
        return "binary", "2 distinct values"
    if numbers is not None and not (numbers % 1 == 0).all():
        return "regression", f"numbers with fractions ({distinct:,} distinct values)"
    if numbers is not None and distinct > MAX_CLASSES:
        return "regression", f"whole numbers with {distinct:,} distinct values (more than {MAX_CLASSES} classes)"
    if distinct <= MAX_CLASSES:
        kind = "whole numbers" if numbers is not None else "text values"
        return "multiclass", f"{distinct} distinct {kind} (3 to {MAX_CLASSES})"
    raise ConfigError(
        f"target {name!r} has {distinct:,} distinct text values: too many to infer a multiclass task (at most "
        f"{MAX_CLASSES}); pass --task multiclass if that is meant, or pick another --target"
    )


def label_suffix(values: pd.Series) -> str:
    """A trailing mark some labels carry and others do not (`>50K` and `>50K.`): ingest.label_suffix, or ""."""
    distinct = {str(v) for v in values.unique()}
    for suffix in LABEL_SUFFIXES:
        marked = {v for v in distinct if v.endswith(suffix) and len(v) > len(suffix)}
        if marked and len(marked) < len(distinct) and all(v.removesuffix(suffix) in distinct for v in marked):
            return suffix
    return ""


def _label_order(labels: Sequence[str]) -> tuple[str, ...]:
    """Labels sorted as numbers when they all are numbers (0, 1, 2, 10), else as text."""
    as_numbers = _numbers(pd.Series(list(labels), dtype="object"))
    if as_numbers is not None:
        return tuple(label for _, label in sorted(zip(as_numbers.tolist(), labels, strict=True)))
    return tuple(sorted(labels))


def profile_target(
    values: pd.Series, name: str, task: Task, reason: str, inferred: bool, positive: str | None
) -> TargetProfile:
    """Labels, counts and the positive label (classification), or the spread (regression), of the target."""
    missing = int(values.isna().sum())
    present = values.dropna()
    if task == "regression":
        numbers = pd.to_numeric(present, errors="coerce").astype(float)
        return TargetProfile(
            name, task, reason, inferred, missing,
            minimum=float(numbers.min()), maximum=float(numbers.max()),
            mean=float(numbers.mean()), std=float(numbers.std(ddof=0)),
        )  # fmt: skip
    text = present.astype("str")
    counts_series = text.value_counts()
    labels = _label_order([str(v) for v in counts_series.index])
    counts = {label: int(counts_series[label]) for label in labels}
    if task == "binary" and len(labels) != 2:
        raise ConfigError(
            f"--task binary needs a target with 2 values; {name!r} has {len(labels)}: {list(labels)[:10]}"
        )
    if task == "multiclass" and len(labels) < 3:
        raise ConfigError(
            f"--task multiclass needs a target with 3 or more values; {name!r} has {len(labels)}: {list(labels)}"
        )
    if positive is not None and task != "binary":
        raise ConfigError(f"--positive applies to binary tasks; the task is {task}")
    positive_label = positive_reason = None
    if task == "binary":
        if positive is not None:
            if positive not in labels:
                raise ConfigError(f"--positive {positive!r} is not a value of {name!r}; its values are {list(labels)}")
            positive_label, positive_reason = positive, "given (--positive)"
        else:
            minority = min(labels, key=lambda label: (counts[label], labels.index(label) == 0))
            positive_label = minority
            positive_reason = f"the minority class ({counts[minority]:,} of {sum(counts.values()):,} rows)"
    return TargetProfile(
        name, task, reason, inferred, missing, labels=labels, counts=counts,
        positive_label=positive_label, positive_reason=positive_reason,
    )  # fmt: skip


# --- columns ---------------------------------------------------------------------------------------


def column_kind(column: pd.Series) -> Kind:
    """int / float / category as ingest infers them (retrain/data/schema.py); booleans are categories here.

    A boolean column declared `int` would fail ingest's number check, and as a category it reads as
    "True"/"False" text.
    """
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "category"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_numeric_dtype(dtype):
        return "float"
    return "category"


def _looks_like_dates(text: pd.Series) -> bool:
    """Every one of the first values is written as a date (2024-05-01, 2024-05-01 10:00, 5/1/2024)."""
    head = text.head(DATE_CHECKED)
    return len(head) > 0 and bool(head.str.match(DATE_TEXT).all())


def _exclude_reason(column: pd.Series, kind: Kind, name: str, distinct: int) -> str | None:
    """Why a column is no feature: constant, identifier-like, or dates written as text; None to keep it."""
    present = column.dropna()
    if distinct == 0:
        return "always empty"
    if distinct == 1:
        return f"constant: every value is {str(present.iloc[0])[:40]!r}"
    rows = len(present)
    if kind == "category":
        text = present.astype("str")
        if distinct > MAX_DOMAIN and _looks_like_dates(text):
            return (
                f"dates written as text ({distinct:,} distinct): to a model every new date is unseen; "
                "to split by time instead, pass --time-column " + name
            )
        if rows >= MIN_ID_ROWS and distinct >= ID_SHARE * rows:
            return f"identifier-like: {distinct:,} distinct values in {rows:,} rows (an ID or free text)"
        return None
    if kind == "int" and rows >= MIN_ID_ROWS and distinct >= ID_SHARE * rows:
        span = float(present.max()) - float(present.min()) + 1
        if ID_NAME.search(name) or span <= ID_SPAN_FACTOR * rows:
            return f"identifier-like: {distinct:,} distinct integers in {rows:,} rows (a row number or key)"
    return None


def profile_column(column: pd.Series, name: str) -> ColumnProfile:
    """Type, nulls, distinct values, range or category values of one column, and whether to exclude it."""
    kind = column_kind(column)
    present = column.dropna()
    distinct = int(present.nunique())
    null_fraction = float(column.isna().mean()) if len(column) else 0.0
    reason = _exclude_reason(column, kind, name, distinct)
    id_name = bool(ID_NAME.search(name))
    if kind == "category":
        counts = present.astype("str").value_counts()
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        values = tuple(str(v) for v, _ in ordered) if distinct <= MAX_DOMAIN else None
        rarest = (str(ordered[-1][0]), int(ordered[-1][1])) if ordered else None
        return ColumnProfile(name, kind, null_fraction, distinct, values=values, rarest=rarest,
                             exclude_reason=reason, id_name=id_name)  # fmt: skip
    numbers = pd.to_numeric(present, errors="coerce").astype(float)
    low = float(numbers.min()) if len(numbers) else None
    high = float(numbers.max()) if len(numbers) else None
    return ColumnProfile(name, kind, null_fraction, distinct, minimum=low, maximum=high, exclude_reason=reason,
                         id_name=id_name)  # fmt: skip


def _split_column(frame: pd.DataFrame, name: str, role: Literal["time", "group"]) -> SplitColumn:
    """Check the time / group column the way split.py will use it, and describe it in one line."""
    column = frame[name]
    option = f"--{role}-column {name!r}"
    if column.isna().any():
        raise DataError(f"{option}: {int(column.isna().sum()):,} rows have no value (split needs one on every row)")
    if role == "group":
        groups = int(column.nunique())
        if groups < 3:
            raise DataError(f"{option}: {groups} group(s); carving valid and test needs 3 or more")
        return SplitColumn(role, name, f"{groups:,} groups, {len(column) / groups:,.1f} rows per group on average")
    from retrain.data.split import time_values  # imports scikit-learn

    times = time_values(column, name)
    distinct = int(times.nunique())
    if distinct < 3:
        raise DataError(f"{option}: {distinct} distinct time(s); train < valid < test needs 3 or more")
    return SplitColumn(role, name, f"from {times.min()} to {times.max()}, {distinct:,} distinct times")


def duplicate_share(frame: pd.DataFrame) -> float:
    """Share of rows that have an identical copy (every copy counts, as in the data gate)."""
    if frame.empty:
        return 0.0
    return float(frame.astype("object").duplicated(keep=False).mean())


def score_features(frame: pd.DataFrame, dataset: DatasetConfig, seed: int) -> tuple[str, dict[str, float], str | None]:
    """The data gate's single-feature scores (retrain/data/leakage.py): metric, score per feature, why skipped."""
    from retrain.data.leakage import feature_scores

    scores = feature_scores(frame, dataset, seed)
    return scores.metric, {c: float(s) for c, s in scores.scores.items() if math.isfinite(s)}, scores.skipped


def _data_bytes(root: Path, source: Source, frame: pd.DataFrame) -> int:
    """Bytes the source stands for as ingest.max_bytes counts them (uncompressed file sizes, or SQL memory)."""
    if source.kind == "sql":
        return int(frame.memory_usage(deep=True, index=False).sum())
    files = glob_files(root, source.spec) if source.kind == "glob" else [resolve_path(root, source.spec)]
    return sum(data_size(f) for f in files)


# --- the whole table -------------------------------------------------------------------------------


def _check_names(
    target: str, protected: Sequence[str], time_column: str | None, group_column: str | None
) -> tuple[str, ...]:
    """Column roles that cannot go together; the split column kept by ingest besides the features."""
    if time_column and group_column:
        raise ConfigError("pass --time-column or --group-column, not both (split uses one or the other)")
    keep = tuple(c for c in (time_column, group_column) if c)
    for name in keep:
        if name == target:
            raise ConfigError(f"{name!r} is the target; it cannot also be the split column")
        if name in protected:
            raise ConfigError(f"{name!r} is the split column; it cannot also be a protected attribute (a feature)")
    if target in protected:
        raise ConfigError(f"the target {target!r} cannot be a protected attribute")
    return keep


@dataclass(frozen=True)
class TableRead:
    """The table as ingest reads it under the settings found: the rows, NA markers, delimiter and task."""

    frame: pd.DataFrame
    source: Source
    delimiter: str
    na_found: dict[str, tuple[str, ...]]
    label_suffix: str
    task: Task
    task_reason: str
    inferred: bool


def read_table_for_init(
    data: str, *, target: str, root: Path, query: str | None, task: Task | None, named: tuple[str, ...] = ()
) -> TableRead:
    """Read DATA twice at most: without NA markers (to find them and the task), then as ingest will read it.

    `named`: other columns the caller needs (split, protected); a missing one fails listing the columns.
    """
    source = parse_source(data, query)
    if source.kind == "sql" and not query:
        raise ConfigError(f"{display(data)} is a database URL: pass --query with the SELECT to read")
    if query and source.kind != "sql":
        raise ConfigError(f"--query needs DATA to be a SQLAlchemy URL (sqlite:///file.db, ...), not {data!r}")
    first = _first_file(root, source)
    delimiter = sniff_delimiter(first) if first is not None else ","
    provisional = DatasetConfig(name="profile", task="multiclass", target=target)
    raw_cfg = IngestConfig(source=data, query=query, na_values=(), delimiter=delimiter, max_bytes=MAX_BYTES)
    raw = _raw_frames(source, root, raw_cfg, provisional, named)
    found = na_markers(raw)
    na_values = tuple(found)
    labels = pd.concat([f[target] for f in raw], ignore_index=True)
    present = labels.where(~labels.isin(na_values)).dropna()  # already stripped by normalise_labels
    if present.empty:
        raise DataError(f"{display(data)}: the target {target!r} has no values")
    suffix = label_suffix(present) if task != "regression" else ""
    present = present.str.removesuffix(suffix) if suffix else present
    if task is None:
        task, reason = infer_task(present, target)
        inferred = True
    else:
        reason, inferred = "given (--task)", False
        if task == "regression" and _numbers(present) is None:
            bad = present[pd.to_numeric(present, errors="coerce").isna()].unique()[:3].tolist()
            raise ConfigError(f"--task regression needs a numeric target; {target!r} holds text such as {bad}")
    suffix = suffix if task != "regression" else ""
    read_task: Task = "regression" if task == "regression" else "multiclass"
    if na_values or suffix or source.kind == "glob" or read_task == "regression":
        cfg = IngestConfig(
            source=data, query=query, na_values=na_values, label_suffix=suffix, delimiter=delimiter, max_bytes=MAX_BYTES
        )
        frame = _read(source, root, cfg, DatasetConfig(name="profile", task=read_task, target=target), named)
    else:
        frame = raw[0]  # the first read was already ingest's read: no markers, classification
    return TableRead(frame.reset_index(drop=True), source, delimiter, found, suffix, task, reason, inferred)


def profile_table(
    data: str,
    *,
    target: str,
    root: Path,
    query: str | None = None,
    task: Task | None = None,
    positive: str | None = None,
    protected: Sequence[str] = (),
    time_column: str | None = None,
    group_column: str | None = None,
    leakage_threshold: float = 0.98,
    max_rows: int = MAX_PROFILE_ROWS,
    seed: int = SEED,
) -> Profile:
    """Read DATA (file, glob of batches, or SQLAlchemy URL + query) as ingest does and profile it.

    Relative paths are resolved from `root`. Bad input raises ConfigError / DataError naming the problem.
    """
    keep = _check_names(target, protected, time_column, group_column)
    read = read_table_for_init(
        data, target=target, root=root, query=query, task=task, named=(*keep, *dict.fromkeys(protected))
    )
    frame = read.frame
    target_profile = profile_target(frame[target], target, read.task, read.task_reason, read.inferred, positive)
    labelled = frame[frame[target].notna()]
    split_column = None
    if time_column:
        split_column = _split_column(labelled, time_column, "time")
    elif group_column:
        split_column = _split_column(labelled, group_column, "group")
    profiled = sample(labelled, max_rows, seed).reset_index(drop=True)
    if len(profiled) < len(labelled):
        logger.info("profiling a seeded sample of %d of %d labelled rows", len(profiled), len(labelled))
    columns = [profile_column(profiled[name], str(name)) for name in profiled.columns if name not in (target, *keep)]
    columns = [replace(c, exclude_reason=None) if c.name in protected else c for c in columns]
    excluded = [c.name for c in columns if c.excluded]
    if len(excluded) == len(columns):
        reasons = "; ".join(f"{c.name}: {c.exclude_reason}" for c in columns) or "the table has no other column"
        raise DataError(f"{display(data)}: no feature columns besides the target {target!r} ({reasons})")
    kept = profiled.drop(columns=excluded)
    profile = Profile(
        source=data, query=query, kind=read.source.kind, delimiter=read.delimiter, na_values=tuple(read.na_found),
        na_found=read.na_found, label_suffix=read.label_suffix, rows=len(frame), profiled_rows=len(profiled),
        data_bytes=_data_bytes(root, read.source, frame), duplicate_fraction=duplicate_share(kept),
        target=target_profile, columns=tuple(columns), protected=tuple(protected), split_column=split_column,
        leakage_metric="", leakage_threshold=leakage_threshold, leakage_skipped=None, frame=kept,
    )  # fmt: skip
    metric, scores, skipped = score_features(kept, profile.dataset(), seed)
    profile.columns = tuple(replace(c, score=scores.get(c.name)) for c in columns)
    profile.leakage_metric, profile.leakage_skipped = metric, skipped
    return profile
