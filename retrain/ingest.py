"""Parse raw source files into one typed snapshot table, handling the data's quirks from params."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig, IngestConfig
from retrain.errors import DataError

logger = logging.getLogger(__name__)

SOURCE_COLUMN = "__source__"
"""Reserved snapshot column: which declared source a row came from ("main" or "test")."""


def check_size(path: Path, max_bytes: int) -> None:
    """Refuse a file over the cap before reading a byte of it, so memory stays bounded."""
    if not path.is_file():
        raise DataError(f"{path}: source file does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path}: file is {size:,} bytes, over ingest.max_bytes = {max_bytes:,}")
    if size == 0:
        raise DataError(f"{path}: file is empty")


def read_table(path: Path, ingest: IngestConfig, dataset: DatasetConfig) -> pd.DataFrame:
    """Read one CSV or Parquet source; numbers stay numbers, text stays `str`, NA markers become NaN."""
    check_size(path, ingest.max_bytes)
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if ".parquet" in suffixes:
            frame = pd.read_parquet(path)
        else:
            categorical = {c: "str" for c in dataset.categorical}
            categorical[dataset.target] = "str"
            frame = pd.read_csv(
                path,
                na_values=list(ingest.na_values),
                keep_default_na=False,
                skipinitialspace=True,
                dtype=categorical,
            )
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"{path}: cannot be parsed: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: no data rows (header only?)")
    check_columns(path, frame, [*dataset.features, dataset.target])
    return frame


def check_columns(path: Path, frame: pd.DataFrame, declared: list[str]) -> None:
    """Each source must have exactly the declared columns, before sources are stacked (which would NaN-fill)."""
    missing = [c for c in declared if c not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in declared]
    if missing or extra:
        raise DataError(
            f"{path}: columns do not match the declared schema (rule: exact column set, dataset.columns + "
            f"dataset.target): missing {missing}, unexpected {extra}"
        )


def normalise_labels(frame: pd.DataFrame, target: str, suffix: str) -> pd.DataFrame:
    """Strip the label's trailing marker (UCI Adult test labels end in '.') and surrounding spaces."""
    if target not in frame.columns:
        return frame
    labels = frame[target].astype("str").str.strip()
    if suffix:
        labels = labels.str.removesuffix(suffix)
    out = frame.copy()
    out[target] = labels.where(frame[target].notna())
    return out


def sample(frame: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset (for quick runs and tests); the full table when rows is None."""
    if rows is None or rows >= len(frame):
        return frame
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(frame), size=rows, replace=False))
    return frame.iloc[keep]


def build_snapshot(sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack the declared sources into one table, remembering where each row came from."""
    parts = []
    for name, frame in sources.items():
        part = frame.reset_index(drop=True).copy()
        part[SOURCE_COLUMN] = name
        parts.append(part)
    snapshot = pd.concat(parts, ignore_index=True)
    snapshot[SOURCE_COLUMN] = snapshot[SOURCE_COLUMN].astype("str")
    logger.info("snapshot: %d rows x %d columns from %s", *snapshot.shape, list(sources))
    return snapshot


def ingest(root_paths: dict[str, Path], ingest_cfg: IngestConfig, dataset: DatasetConfig, seed: int) -> pd.DataFrame:
    """Read every declared source, normalise labels, sample if asked, and stack into a snapshot."""
    frames = {}
    for name, path in root_paths.items():
        frame = read_table(path, ingest_cfg, dataset)
        frame = normalise_labels(frame, dataset.target, ingest_cfg.label_suffix)
        frames[name] = sample(frame, ingest_cfg.sample_rows, seed)
    return build_snapshot(frames)
