"""Parse the declared sources (a file, a glob of batch files, a SQL query) into one typed snapshot table.

Bad input fails here, at parse time, with a DataError naming the file, the problem and where it is
(line, column, value): left to pandas, short rows are NaN-filled, duplicate headers renamed to `x.1` and
a file split on the wrong delimiter read as one column, all without a word.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig, IngestConfig
from retrain.data.sources import (
    SOURCE_KEYS,
    Source,
    directory_message,
    display,
    engine_url,
    file_problem,
    glob_files,
    resolve_path,
)
from retrain.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SOURCE_COLUMN = "__source__"
"""Reserved snapshot column: which declared source a row came from ("main" or "test")."""

SQL_CHUNK_ROWS = 10_000
"""Rows fetched per round trip from a database; the size cap is checked after each chunk."""

MAX_EXAMPLES = 3
OTHER_DELIMITERS = (",", ";", "\t", "|")

Locate = Callable[[int], str]
"""Where the i-th data row of a source is, for messages ("line 7" for CSV, "row 6" otherwise)."""


# --- the column contract -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The first file read: without a declared schema, every later file must match its columns and numbers."""

    where: str
    columns: tuple[str, ...]
    numeric: frozenset[str]

    @classmethod
    def of(cls, where: str, frame: pd.DataFrame) -> Reference:
        """Columns and the numeric ones (a later batch with text there would silently turn them categorical)."""
        numeric = {
            str(c)
            for c in frame.columns
            if pd.api.types.is_numeric_dtype(frame[c].dtype) and not pd.api.types.is_bool_dtype(frame[c].dtype)
        }
        return cls(where, tuple(str(c) for c in frame.columns), frozenset(numeric))


@dataclass(frozen=True)
class Contract:
    """The columns every file of every source must hold once `dataset.exclude` is dropped."""

    declared: tuple[str, ...] | None
    required: tuple[str, ...]
    exclude: tuple[str, ...]

    @classmethod
    def of(cls, dataset: DatasetConfig, keep: tuple[str, ...] = ()) -> Contract:
        """Declared schema: features + target + split columns that are not features; else just the required."""
        extra = tuple(c for c in keep if dataset.columns is None or c not in dataset.columns)
        required = (dataset.target, *extra)
        declared = None if dataset.columns is None else (*dataset.columns, *required)
        return cls(declared, required, tuple(dataset.exclude))

    def check(self, where: str, header: list[str], reference: Reference | None) -> list[str]:
        """The columns kept from a source's header; fails on duplicate, reserved, missing or extra columns.

        Without a declared schema, the first file read is the reference every other file must match.
        """
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise DataError(f"{where}: duplicate column names {dupes} in the header (rule: unique column names)")
        reserved = [c for c in header if c == SOURCE_COLUMN]
        if reserved:
            raise DataError(f"{where}: column {SOURCE_COLUMN!r} is reserved for the snapshot (rule: reserved names)")
        kept = [c for c in header if c not in self.exclude]
        if self.declared is not None:
            missing, extra = differences(self.declared, kept)
            if missing or extra:
                raise DataError(
                    f"{where}: columns do not match the declared schema (rule: exact column set, dataset.columns + "
                    f"dataset.target + split columns, after dataset.exclude): missing {missing}, unexpected {extra}"
                )
            return kept
        missing = [c for c in self.required if c not in kept]
        if missing:
            raise DataError(f"{where}: required columns missing {missing} (rule: target and split columns present)")
        if reference is not None:
            missing, extra = differences(reference.columns, kept)
            if missing or extra:
                raise DataError(
                    f"{where}: columns differ from {reference.where} (rule: every file of every source has the same "
                    f"columns): missing {missing}, unexpected {extra}"
                )
        return kept


def differences(expected: Sequence[str], got: Sequence[str]) -> tuple[list[str], list[str]]:
    """Columns expected but absent, and columns present but not expected, in their own order."""
    return [c for c in expected if c not in got], [c for c in got if c not in expected]


# --- size cap ------------------------------------------------------------------------------------


def gzip_size(path: Path) -> int:
    """Uncompressed size of a gzip file from its trailer (mod 4 GiB; the scan still counts every byte)."""
    with path.open("rb") as handle:
        handle.seek(-4, 2)
        return int.from_bytes(handle.read(4), "little")


def parquet_size(path: Path) -> int:
    """Uncompressed data size of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def data_size(path: Path) -> int:
    """Bytes the file stands for: on disk, or uncompressed when that is known without reading it."""
    size = path.stat().st_size
    suffix = path.suffix.lower()
    if suffix == ".gz" and size >= 18:
        return max(size, gzip_size(path))
    if suffix == ".parquet" and size > 0:
        return max(size, parquet_size(path))
    return size


def check_size(path: Path, max_bytes: int) -> int:
    """Refuse a missing, empty or oversized file before parsing a byte of it; returns its data size."""
    if path.is_dir():
        raise DataError(directory_message(str(path), path))
    if not path.is_file():
        raise DataError(f"{path}: source file does not exist")
    on_disk = path.stat().st_size
    if on_disk == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    if on_disk > max_bytes:
        raise DataError(f"{path}: file is {on_disk:,} bytes, over ingest.max_bytes = {max_bytes:,}")
    size = data_size(path)
    if size > max_bytes:
        raise DataError(f"{path}: holds {size:,} bytes uncompressed, over ingest.max_bytes = {max_bytes:,}")
    return size


def check_total_size(spec: str, files: list[Path], max_bytes: int) -> None:
    """The cap holds for a glob's files together, checked before any of them is parsed."""
    total = sum(check_size(f, max_bytes) for f in files)
    if total > max_bytes:
        raise DataError(
            f"{spec}: {len(files)} batch files hold {total:,} bytes together, over ingest.max_bytes = {max_bytes:,}"
        )


# --- CSV structure -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvLayout:
    """What the raw scan of a CSV file found: the header as written and where the data rows are."""

    header: list[str]
    rows: int
    first_line: int | None
    """Line of the first data row when every row is one line with no blank lines between (else None)."""

    def locate(self, i: int) -> str:
        """Where data row i (0-based) is in the file."""
        return f"line {self.first_line + i}" if self.first_line is not None else f"data row {i + 1}"


def open_text(path: Path) -> Any:
    """A text handle on a CSV file, decompressing .gz."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _counted(lines: Iterable[str], where: Path, max_bytes: int) -> Iterator[str]:
    """Pass lines through, failing once they add up to more than the cap (a lying gzip trailer)."""
    total = 0
    for line in lines:
        total += len(line)
        if total > max_bytes:
            raise DataError(f"{where}: more than ingest.max_bytes = {max_bytes:,} characters of text; aborted")
        yield line


def first_bad_utf8_line(path: Path) -> int:
    """Line number of the first line that is not UTF-8 (only looked for once decoding has failed)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


SCAN_BLOCK_BYTES = 1 << 26
"""Bytes read per step by `count_plain_rows` (64 MiB: a few hundred MB of numpy temporaries at most)."""


def _binary(path: Path) -> Any:
    """A binary handle on a CSV file, decompressing .gz."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def count_plain_rows(path: Path, delimiter: str, width: int, max_bytes: int) -> tuple[int, bool] | None:
    """(data rows, no blank lines) of a CSV whose header is line 1, counted on bytes with numpy; None: use the scan.

    The Python record scan costs ~6 us a row (a minute at 10M rows). Without a quote, CR or NUL byte after the
    header, a record is a line and its fields are its delimiters + 1, so counting delimiters per line decides
    what the scan would. Anything else (quotes, CR line ends, a row of the wrong width, bad UTF-8, more than
    ingest.max_bytes characters, a read error) returns None: `scan_csv` then reads the records and says what is
    wrong exactly as before. Only the first line (the header) may hold quotes.
    """
    sep = delimiter.encode("utf-8")
    if len(sep) != 1 or sep in b'"\r\n\x00':
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    rows, chars, blank, carry, first = 0, 0, False, b"", True
    try:
        with _binary(path) as handle:
            while block := handle.read(SCAN_BLOCK_BYTES):
                chars += len(decoder.decode(block))
                if chars > max_bytes:
                    return None
                if first:  # the header line: already parsed (and counted) by the record scan
                    end = block.find(b"\n")
                    if end < 0:
                        return None
                    block, first = block[end + 1 :], False
                if b'"' in block or b"\r" in block or b"\x00" in block:
                    return None
                data = carry + block
                cut = data.rfind(b"\n") + 1
                data, carry = data[:cut], data[cut:]
                if not data:
                    continue
                found = _plain_lines(np.frombuffer(data, dtype=np.uint8), sep[0], width)
                if found is None:
                    return None
                rows, blank = rows + found[0], blank or found[1]
            decoder.decode(b"", final=True)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError):
        return None
    if carry:
        if carry.count(sep) != width - 1:
            return None
        rows += 1
    return rows, not blank


def _plain_lines(data: np.ndarray, sep: int, width: int) -> tuple[int, bool] | None:
    """(non-empty lines, any empty line) of newline-terminated bytes; None if a non-empty line has another width."""
    ends = np.flatnonzero(data == 10)
    seps = np.flatnonzero(data == sep)
    per_line = np.diff(np.searchsorted(seps, ends), prepend=0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    empty = ends == starts
    if np.any(per_line[~empty] != width - 1):
        return None
    return int((~empty).sum()), bool(empty.any())


def scan_csv(path: Path, delimiter: str, max_bytes: int) -> CsvLayout:
    """Read the file once as raw records: header sanity, the same field count on every row, closed quotes.

    A file with no quote, CR or NUL after its header line is counted on bytes (`count_plain_rows`, ~6x less
    CPU); any other file, and any file that count rejects, is read record by record, for the exact message.
    """
    last_line = 0
    rows = 0
    simple = True
    try:
        with open_text(path) as handle:
            reader = csv.reader(
                _counted(handle, path, max_bytes), delimiter=delimiter, skipinitialspace=True, strict=True
            )
            header = next((r for r in reader if r), None)
            if header is None:
                raise DataError(f"{path}: file is empty (no header line)")
            first_line = reader.line_num + 1
            header = [h.strip() for h in header]
            if len(header) == 1:
                others = [d for d in OTHER_DELIMITERS if d != delimiter and d in header[0]]
                hint = f" (the header contains {others[0]!r})" if others else ""
                raise DataError(
                    f"{path}: found 1 column {header[0][:80]!r} splitting the header on {delimiter!r}{hint}; "
                    "is ingest.delimiter right?"
                )
            if any(not h for h in header):
                raise DataError(f"{path}: line 1: the header has an empty column name (rule: named columns)")
            width = len(header)
            counted = count_plain_rows(path, delimiter, width, max_bytes) if first_line == 2 else None
            if counted is not None:
                rows, simple = counted
            last_line = reader.line_num
            for record in reader if counted is None else ():
                start = last_line + 1
                if reader.line_num != start:
                    simple = False
                last_line = reader.line_num
                if not record:
                    simple = False
                    continue
                if len(record) != width:
                    fewer = "fewer" if len(record) < width else "more"
                    raise DataError(
                        f"{path}: line {start}: {len(record)} fields, {fewer} than the header's {width} "
                        f"(rule: every row has the header's fields; delimiter {delimiter!r})"
                    )
                rows += 1
    except csv.Error as exc:
        reason = "unterminated quote" if "end of data" in str(exc) else str(exc)
        raise DataError(f"{path}: line {last_line + 1}: {reason} (rule: well-formed CSV quoting)") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: line {first_bad_utf8_line(path)}: not UTF-8 text ({exc.reason})") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    if rows == 0:
        raise DataError(f"{path}: no data rows (header only)")
    return CsvLayout(header, rows, first_line if simple else None)


# --- types ---------------------------------------------------------------------------------------


def _examples(values: pd.Series, locate: Locate) -> str:
    """Up to three offending values with where they are."""
    return ", ".join(f"{locate(int(i))}: {v!r}" for i, v in values.head(MAX_EXAMPLES).items())


def as_text(column: pd.Series) -> pd.Series:
    """A column as pandas' `str` dtype, missing values kept missing."""
    if pd.api.types.is_string_dtype(column.dtype) and column.dtype != object:
        return column
    return column.astype("str").where(column.notna())


def as_number(column: pd.Series, where: str, name: str, kind: str, locate: Locate) -> pd.Series:
    """A numeric column, or a DataError naming the column, the rule and the values that are not numbers."""
    if pd.api.types.is_bool_dtype(column.dtype) or not pd.api.types.is_numeric_dtype(column.dtype):
        text = column.where(column.notna())
        numbers = pd.to_numeric(text.astype("object"), errors="coerce")
        bad = text[numbers.isna() & text.notna()]
        if len(bad) or pd.api.types.is_bool_dtype(column.dtype):
            shown = bad if len(bad) else column
            hint = '; empty fields are missing values only if ingest.na_values lists ""' if (bad == "").any() else ""
            raise DataError(
                f"{where}: column {name!r} (rule: type {kind}): {len(shown):,} values are not numbers, "
                f"e.g. {_examples(shown, locate)}{hint}"
            )
        column = numbers
    if kind == "int" and pd.api.types.is_float_dtype(column.dtype):
        finite = column[column.notna()]
        bad = finite[(finite % 1 != 0) | ~np.isfinite(finite)]
        if len(bad):
            raise DataError(
                f"{where}: column {name!r} (rule: type int): {len(bad):,} values are not whole numbers, "
                f"e.g. {_examples(bad, locate)}"
            )
    return column


def settle_types(
    frame: pd.DataFrame, where: str, dataset: DatasetConfig, locate: Locate, reference: Reference | None = None
) -> pd.DataFrame:
    """Declared numbers numeric, declared categories and classification labels `str`, a regression target numeric."""
    out = frame.infer_objects()
    target = dataset.target
    if dataset.is_classification:
        out[target] = as_text(out[target])
    else:
        out[target] = as_number(out[target], where, target, "float (regression target)", locate)
    if dataset.columns is None:
        for name in out.columns:
            if name == target:
                continue
            if reference is not None and name in reference.numeric:
                out[name] = as_number(out[name], where, name, f"number, as in {reference.where}", locate)
            elif out[name].dtype == object:
                out[name] = as_text(out[name])
        return out
    for name, spec in dataset.columns.items():
        if spec.type == "category":
            out[name] = as_text(out[name])
        else:
            out[name] = as_number(out[name], where, name, spec.type, locate)
    return out


def mark_missing(frame: pd.DataFrame, na_values: tuple[str, ...]) -> pd.DataFrame:
    """NA markers in text columns become missing (CSV gets this from read_csv; Parquet and SQL here)."""
    if not na_values:
        return frame
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object or pd.api.types.is_string_dtype(out[name].dtype):
            out[name] = out[name].mask(out[name].isin(na_values))
    return out


# --- readers -------------------------------------------------------------------------------------


@dataclass
class SourceRead:
    """One source's rows and where they came from (one part per file, or the query)."""

    frame: pd.DataFrame
    parts: list[dict[str, Any]] = field(default_factory=list)
    origin: np.ndarray | None = None
    """Index into `parts` for every row (cheap provenance of glob batches)."""


def read_csv(
    path: Path, cfg: IngestConfig, dataset: DatasetConfig, contract: Contract, reference: Reference | None
) -> pd.DataFrame:
    """A CSV file: raw structure scan first, then typed parsing of the kept columns under the scanned names."""
    layout = scan_csv(path, cfg.delimiter, cfg.max_bytes)
    kept = contract.check(str(path), layout.header, reference)
    text = {c: "str" for c in dataset.categorical} if dataset.columns is not None else {}
    if dataset.is_classification:
        text[dataset.target] = "str"
    try:
        frame = pd.read_csv(
            path,
            sep=cfg.delimiter,
            header=0,
            names=layout.header,
            usecols=kept,
            na_values=list(cfg.na_values),
            keep_default_na=False,
            skipinitialspace=True,
            dtype=text,
            encoding="utf-8-sig",
        )
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"{path}: cannot be parsed: {exc}") from exc
    if len(frame) != layout.rows:
        raise DataError(f"{path}: pandas read {len(frame):,} rows where the scan found {layout.rows:,}")
    return settle_types(frame, str(path), dataset, layout.locate, reference)


def read_parquet(
    path: Path, cfg: IngestConfig, dataset: DatasetConfig, contract: Contract, reference: Reference | None
) -> pd.DataFrame:
    """A Parquet file: its own types, checked against the schema like CSV."""
    import pyarrow.parquet as pq

    try:
        header = [str(c) for c in pq.read_schema(path).names]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    kept = contract.check(str(path), header, reference)
    try:
        frame = pd.read_parquet(path, columns=kept)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be parsed: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: no data rows")
    frame = mark_missing(frame.reset_index(drop=True), cfg.na_values)
    return settle_types(frame, str(path), dataset, lambda i: f"row {i + 1}", reference)


def read_table(
    path: Path,
    cfg: IngestConfig,
    dataset: DatasetConfig,
    keep: tuple[str, ...] = (),
    reference: Reference | None = None,
) -> pd.DataFrame:
    """Read one CSV (optionally .gz) or Parquet file; numbers stay numbers, text stays `str`, NA markers NaN."""
    check_size(path, cfg.max_bytes)
    return _read_file(path, cfg, dataset, Contract.of(dataset, keep), reference)


def _read_file(
    path: Path, cfg: IngestConfig, dataset: DatasetConfig, contract: Contract, reference: Reference | None
) -> pd.DataFrame:
    """Dispatch on the file's suffix (size already checked)."""
    if ".parquet" in "".join(path.suffixes[-2:]).lower():
        return read_parquet(path, cfg, dataset, contract, reference)
    return read_csv(path, cfg, dataset, contract, reference)


def read_sql(
    url: str,
    label: str,
    query: str,
    cfg: IngestConfig,
    dataset: DatasetConfig,
    contract: Contract,
    reference: Reference | None,
    chunk_rows: int = SQL_CHUNK_ROWS,
) -> pd.DataFrame:
    """A query's result, fetched in chunks and aborted once it holds more than ingest.max_bytes in memory."""
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    where = f"{label} (query {' '.join(query.split())[:120]!r})"
    try:
        engine = sa.create_engine(url)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"{label}: no database driver for this URL ({exc}); install it, e.g. `pip install psycopg[binary]` "
            "for postgresql+psycopg://"
        ) from exc
    except ArgumentError as exc:
        raise ConfigError(f"{label}: not a valid SQLAlchemy URL: {exc}") from exc
    chunks: list[pd.DataFrame] = []
    used = rows = 0
    try:
        with engine.connect() as conn:
            streaming = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows)
            for chunk in pd.read_sql_query(sa.text(query), streaming, chunksize=chunk_rows):
                used += int(chunk.memory_usage(deep=True, index=False).sum())
                rows += len(chunk)
                if used > cfg.max_bytes:
                    raise DataError(
                        f"{where}: the result holds more than ingest.max_bytes = {cfg.max_bytes:,} bytes in memory "
                        f"after {rows:,} rows; aborted (narrow the query or raise the cap)"
                    )
                chunks.append(chunk)
    except (SQLAlchemyError, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
        raise DataError(f"{where}: query failed: {getattr(cause, 'orig', None) or cause}") from exc
    finally:
        engine.dispose()
    if not chunks or rows == 0:
        raise DataError(f"{where}: the query returned no rows")
    header = [str(c) for c in chunks[0].columns]
    kept = contract.check(where, header, reference)
    frame = pd.concat([c[kept] for c in chunks], ignore_index=True)
    frame = mark_missing(frame, cfg.na_values)
    return settle_types(frame, where, dataset, lambda i: f"result row {i + 1}", reference)


def read_source(
    source: Source,
    root: Path,
    cfg: IngestConfig,
    dataset: DatasetConfig,
    contract: Contract,
    reference: Reference | None = None,
) -> tuple[SourceRead, Reference]:
    """Every row of one declared source, and the column reference later files must match."""
    if source.kind == "sql":
        label = display(source.spec)
        frame = read_sql(engine_url(root, source), label, source.query or "", cfg, dataset, contract, reference)
        part = {"kind": "sql", "source": label, "query": source.query, "rows": len(frame)}
        return SourceRead(frame, [part]), reference or Reference.of(label, frame)
    if source.kind == "glob":
        files = glob_files(root, source.spec)
        if not files:
            raise DataError(f"{source.spec}: the glob matches no files")
        check_total_size(source.spec, files, cfg.max_bytes)
    else:
        files = [resolve_path(root, source.spec)]
        problem = file_problem(root, source.spec)
        if problem is not None and (files[0].exists() or files[0].is_symlink()):  # missing: check_size says so
            raise DataError(problem)
        check_size(files[0], cfg.max_bytes)
    frames, parts = [], []
    for path in files:
        frame = _read_file(path, cfg, dataset, contract, reference)
        reference = reference or Reference.of(str(path), frame)
        frames.append(frame)
        shown = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        parts.append({"kind": source.kind, "source": shown, "rows": len(frame)})
    stacked = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    origin = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    if len(frames) > 1:
        logger.info("%s: stacked %d batch files, %d rows", source.spec, len(frames), len(stacked))
    return SourceRead(stacked.reset_index(drop=True), parts, origin), reference


# --- the snapshot --------------------------------------------------------------------------------


def normalise_labels(frame: pd.DataFrame, target: str, suffix: str) -> pd.DataFrame:
    """Strip the label's trailing marker (UCI Adult test labels end in '.') and surrounding spaces."""
    if target not in frame.columns:
        return frame
    labels = frame[target].astype("str").str.strip()
    if suffix:
        labels = labels.str.removesuffix(suffix)
    out = frame.copy(deep=False)  # copy-on-write: the other columns are shared, not copied (10M rows: ~1 GB)
    out[target] = labels.where(frame[target].notna())
    return out


def sample_positions(n: int, rows: int | None, seed: int) -> np.ndarray | None:
    """Seeded, ordered row positions of a subset; None means every row."""
    if rows is None or rows >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=rows, replace=False))


def sample(frame: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset (for quick runs and tests); the full table when rows is None."""
    keep = sample_positions(len(frame), rows, seed)
    return frame if keep is None else frame.iloc[keep]


def main_rows(snapshot: pd.DataFrame) -> pd.DataFrame:
    """The snapshot's rows from the main source; the snapshot itself when it has no other (no copy of a large table)."""
    is_main = (snapshot[SOURCE_COLUMN] == "main").to_numpy()
    return snapshot if is_main.all() else snapshot[is_main]


def build_snapshot(sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack the declared sources into one table, remembering where each row came from."""
    parts = []
    for name, frame in sources.items():
        part = frame.reset_index(drop=True)  # copy-on-write: adding the column below leaves `frame` as it is
        part[SOURCE_COLUMN] = name
        parts.append(part)
    snapshot = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)  # one source: no copy
    snapshot[SOURCE_COLUMN] = snapshot[SOURCE_COLUMN].astype("str")
    logger.info("snapshot: %d rows x %d columns from %s", *snapshot.shape, list(sources))
    return snapshot


@dataclass
class Ingested:
    """The snapshot and its provenance: per source file (or query), rows read and the snapshot rows it holds."""

    snapshot: pd.DataFrame
    provenance: list[dict[str, Any]]


def ingest(
    sources: dict[str, Source],
    root: Path,
    cfg: IngestConfig,
    dataset: DatasetConfig,
    seed: int,
    keep: tuple[str, ...] = (),
) -> Ingested:
    """Read every declared source, normalise labels, sample if asked, and stack into a snapshot."""
    contract = Contract.of(dataset, keep)
    reference: Reference | None = None
    frames: dict[str, pd.DataFrame] = {}
    provenance: list[dict[str, Any]] = []
    offset = 0
    for name, source in sources.items():
        try:
            read, reference = read_source(source, root, cfg, dataset, contract, reference)
        except DataError as exc:
            if source.kind != "file" or file_problem(root, source.spec) is None:
                raise
            raise DataError(f"{SOURCE_KEYS.get(name, name)}: {exc}") from exc  # a path problem: name the key
        frame = read.frame
        if dataset.is_classification:
            frame = normalise_labels(frame, dataset.target, cfg.label_suffix)
        origin = read.origin if read.origin is not None else np.zeros(len(frame), dtype=int)
        if cfg.drop_missing_target:
            labelled = frame[dataset.target].notna().to_numpy()
            if not labelled.all():
                logger.warning(
                    "%s: dropped %d of %d rows with no %r (ingest.drop_missing_target)",
                    source.spec,
                    int((~labelled).sum()),
                    len(frame),
                    dataset.target,
                )
                frame, origin = frame[labelled], origin[labelled]
        positions = sample_positions(len(frame), cfg.sample_rows, seed)
        if positions is not None:
            frame, origin = frame.iloc[positions], origin[positions]
        counts = np.bincount(origin, minlength=len(read.parts))
        for part, count in zip(read.parts, counts, strict=True):
            provenance.append({**part, "name": name, "snapshot_rows": [offset, offset + int(count)]})
            offset += int(count)
        frames[name] = frame
    return Ingested(build_snapshot(frames), provenance)
