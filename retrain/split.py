"""Train / valid / test splits that never share a row, stratified on the label."""

from __future__ import annotations

import logging

import pandas as pd
from sklearn.model_selection import train_test_split

from retrain.config import SplitConfig
from retrain.errors import DataError
from retrain.ingest import SOURCE_COLUMN

logger = logging.getLogger(__name__)

ROW_ID = "__row__"


def split_snapshot(snapshot: pd.DataFrame, cfg: SplitConfig, target: str, seed: int) -> dict[str, pd.DataFrame]:
    """Split the snapshot; a declared test source is the test split, else test is carved from main."""
    frame = snapshot.reset_index(drop=True)
    frame.index.name = ROW_ID
    declared_test = frame[frame[SOURCE_COLUMN] == "test"]
    main = frame[frame[SOURCE_COLUMN] != "test"]
    if declared_test.empty:
        main, declared_test = _stratified(main, cfg.test_size, target, seed, "test")
    train, valid = _stratified(main, cfg.valid_size, target, seed, "valid")
    parts = {"train": train, "valid": valid, "test": declared_test}
    check_disjoint(parts)
    for name, part in parts.items():
        logger.info("split %s: %d rows, positive share %.3f", name, len(part), _share(part, target))
    return {name: part.drop(columns=[SOURCE_COLUMN]).reset_index(drop=True) for name, part in parts.items()}


def _stratified(
    frame: pd.DataFrame, size: float, target: str, seed: int, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One stratified cut, with an error that says which split could not be made."""
    try:
        return train_test_split(frame, test_size=size, random_state=seed, stratify=frame[target])
    except ValueError as exc:
        raise DataError(f"split: cannot carve a stratified {name} split of {len(frame)} rows: {exc}") from exc


def check_disjoint(parts: dict[str, pd.DataFrame]) -> None:
    """Fail if any snapshot row landed in two splits (leakage between train and test)."""
    seen: dict[int, str] = {}
    for name, part in parts.items():
        for row in part.index:
            if row in seen:
                raise DataError(f"split: snapshot row {row} is in both {seen[row]} and {name}")
            seen[row] = name


def _share(frame: pd.DataFrame, target: str) -> float:
    """Share of the most common label, for the split log line."""
    return float(frame[target].value_counts(normalize=True).iloc[0]) if len(frame) else 0.0
