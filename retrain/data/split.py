"""Train / valid / test splits that never share a row or a group, and respect time when asked.

Three modes, chosen by params: stratified on the label (classification default; a plain seeded shuffle
for regression), group-aware (`split.group_column`: every group lives in one split) and time-ordered
(`split.time_column`: train is earlier than valid, valid earlier than test, with no timestamp in two
splits). A declared test source is always the test split as is.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from retrain.config import DatasetConfig, SplitConfig
from retrain.data.ingest import SOURCE_COLUMN
from retrain.errors import DataError

logger = logging.getLogger(__name__)

ROW_ID = "__row__"

Parts = dict[str, pd.DataFrame]


def split_snapshot(snapshot: pd.DataFrame, cfg: SplitConfig, dataset: DatasetConfig, seed: int) -> Parts:
    """Split the snapshot; a declared test source is the test split, else test is carved from main.

    The cuts and checks see only the columns they need (source, label, group, time): each part's rows are
    then taken from the whole table once, so a 10M-row table is copied once, not once per cut.
    """
    frame = snapshot.reset_index(drop=True)
    frame.index.name = ROW_ID
    if cfg.time_column:
        frame[cfg.time_column] = time_values(frame[cfg.time_column], cfg.time_column)
    keys = [SOURCE_COLUMN, dataset.target, cfg.group_column, cfg.time_column]
    narrow = frame[[c for c in dict.fromkeys(keys) if c is not None and c in frame.columns]]
    declared_test = narrow[narrow[SOURCE_COLUMN] == "test"]
    main = narrow[narrow[SOURCE_COLUMN] != "test"]
    if declared_test.empty:
        main, declared_test = cut(main, cfg, dataset, cfg.test_size, seed, "test")
    train, valid = cut(main, cfg, dataset, cfg.valid_size, seed, "valid")
    if cfg.time_column:
        train = train.sort_values(cfg.time_column, kind="stable")
    parts = {"train": train, "valid": valid, "test": declared_test}
    check_disjoint(parts)
    if cfg.group_column:
        check_groups_disjoint(parts, cfg.group_column)
    if cfg.time_column:
        check_time_order(parts, cfg.time_column)
    for name, part in parts.items():
        logger.info("split %s: %d rows, %s", name, len(part), _label_summary(part, dataset))
    return {name: rows_of(frame, part.index) for name, part in parts.items()}


def rows_of(frame: pd.DataFrame, rows: pd.Index) -> pd.DataFrame:
    """The whole table's rows `rows` (snapshot row ids, in that order) as a split file's table."""
    return frame.drop(columns=[SOURCE_COLUMN]).iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)


def cut(
    frame: pd.DataFrame, cfg: SplitConfig, dataset: DatasetConfig, size: float, seed: int, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One cut of `frame` into (rest, held-out part of about `size`) in the configured mode."""
    if len(frame) < 2:
        raise DataError(f"split: cannot carve a {name} split from {len(frame)} rows")
    if cfg.time_column:
        return _by_time(frame, cfg.time_column, size, name)
    if cfg.group_column:
        return _by_group(frame, cfg.group_column, size, seed, name)
    if dataset.is_classification:
        return _stratified(frame, size, dataset.target, seed, name)
    return tuple(train_test_split(frame, test_size=size, random_state=seed, shuffle=True))  # type: ignore[return-value]


def time_values(column: pd.Series, name: str) -> pd.Series:
    """The time column as comparable values: numbers stay numbers, text is parsed as datetimes."""
    if column.isna().any():
        rows = column.index[column.isna()][:5].tolist()
        raise DataError(f"split: time column {name!r} has {int(column.isna().sum())} missing values (rows {rows})")
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return column
    try:
        return pd.to_datetime(column, format="mixed")
    except (ValueError, TypeError) as exc:
        raise DataError(f"split: time column {name!r} is neither numeric nor parseable as dates: {exc}") from exc


def _by_time(frame: pd.DataFrame, column: str, size: float, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest `size` share is held out; the cut moves to a timestamp change so no time is in both."""
    ordered = frame.sort_values(column, kind="stable")
    times = ordered[column].to_numpy()
    at = round(len(ordered) * (1.0 - size))
    at = min(max(at, 1), len(ordered) - 1)
    while at < len(ordered) and times[at] == times[at - 1]:
        at += 1
    if at >= len(ordered):
        raise DataError(f"split: time column {column!r} has too few distinct times to carve a later {name} split")
    return ordered.iloc[:at], ordered.iloc[at:]


def _by_group(frame: pd.DataFrame, column: str, size: float, seed: int, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole groups are held out (about `size` of the rows), so no group is on both sides."""
    groups = frame[column]
    if groups.isna().any():
        raise DataError(f"split: group column {column!r} has {int(groups.isna().sum())} missing values")
    if groups.nunique() < 2:
        raise DataError(f"split: group column {column!r} has {groups.nunique()} group(s); a {name} split needs 2+")
    splitter = GroupShuffleSplit(n_splits=1, test_size=size, random_state=seed)
    rest, held = next(splitter.split(np.zeros(len(frame)), groups=groups.astype("str")))
    return frame.iloc[np.sort(rest)], frame.iloc[np.sort(held)]


def _stratified(
    frame: pd.DataFrame, size: float, target: str, seed: int, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One stratified cut, with an error that says which split could not be made."""
    counts = frame[target].value_counts()
    try:
        strata = label_codes(frame[target])
        return tuple(train_test_split(frame, test_size=size, random_state=seed, stratify=strata))  # type: ignore[return-value]
    except ValueError as exc:
        raise DataError(
            f"split: cannot carve a stratified {name} split of {len(frame)} rows (label counts "
            f"{counts.to_dict()}): {exc}"
        ) from exc


def label_codes(labels: pd.Series) -> np.ndarray | pd.Series:
    """Labels as integer codes in sorted label order: the same strata, and so the same cut, as the labels.

    scikit-learn's stratified split sorts the labels (np.unique) to find the classes: on 10M text labels that
    is a sort of Python strings, most of the split stage. Codes ranked like the sorted labels give it the same
    classes in the same order. Labels with missing values are passed as they are.
    """
    codes, _ = pd.factorize(labels, sort=True)
    return codes if (codes >= 0).all() else labels


def check_disjoint(parts: Parts) -> None:
    """Fail if any snapshot row landed in two splits (leakage between train and test).

    Vectorised (a sort of every part's row ids, not a Python dict of them: 10M rows in about a second); names
    the first repeat in split order, the row and the split that held it first.
    """
    names = list(parts)
    rows = np.concatenate([np.asarray(part.index) for part in parts.values()]) if parts else np.array([])
    owner = np.repeat(np.arange(len(names)), [len(part) for part in parts.values()])
    order = np.argsort(rows, kind="stable")
    repeats = np.flatnonzero(rows[order][1:] == rows[order][:-1])
    if repeats.size:
        at = int(order[repeats + 1].min())  # the earliest position, in split order, whose row was already seen
        first = int(np.flatnonzero(rows == rows[at])[0])
        raise DataError(f"split: snapshot row {rows[at]} is in both {names[owner[first]]} and {names[owner[at]]}")


def check_groups_disjoint(parts: Parts, column: str) -> None:
    """Fail if a group (e.g. a customer) appears in two splits, which would leak across them."""
    owner: dict[str, str] = {}
    for name, part in parts.items():
        for group in part[column].astype("str").unique():
            if group in owner and owner[group] != name:
                raise DataError(f"split: group {column}={group!r} is in both {owner[group]} and {name}")
            owner[group] = name


def check_time_order(parts: Parts, column: str) -> None:
    """Fail unless train is strictly earlier than valid and valid strictly earlier than test."""
    order = [n for n in ("train", "valid", "test") if len(parts[n])]
    for before, after in itertools.pairwise(order):
        latest, earliest = parts[before][column].max(), parts[after][column].min()
        if not latest < earliest:
            raise DataError(
                f"split: {after} must be later than {before} on {column!r}, but {before} ends at {latest} "
                f"and {after} starts at {earliest}"
            )


def _label_summary(frame: pd.DataFrame, dataset: DatasetConfig) -> str:
    """Label shares (classification) or mean (regression), for the split log line."""
    if not len(frame):
        return "empty"
    if dataset.is_classification:
        shares = frame[dataset.target].value_counts(normalize=True).round(3).to_dict()
        return f"label shares {shares}"
    return f"target mean {float(frame[dataset.target].mean()):.4g}"
