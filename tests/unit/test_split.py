"""Given a snapshot, split gives disjoint, stratified parts and uses a declared test source as test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.config import SplitConfig
from retrain.errors import DataError
from retrain.ingest import SOURCE_COLUMN
from retrain.split import check_disjoint, split_snapshot

CFG = SplitConfig(valid_size=0.25, test_size=0.2)


def snapshot(n_main: int, n_test: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = n_main + n_test
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": np.where(rng.random(n) < 0.3, "pos", "neg"),
            SOURCE_COLUMN: ["main"] * n_main + ["test"] * n_test,
        }
    )


def test_declared_test_source_is_the_test_split() -> None:
    parts = split_snapshot(snapshot(400, 100), CFG, "y", seed=1)
    assert len(parts["test"]) == 100
    assert len(parts["train"]) + len(parts["valid"]) == 400
    assert SOURCE_COLUMN not in parts["train"].columns


def test_without_test_source_test_is_carved_and_stratified() -> None:
    parts = split_snapshot(snapshot(1000, 0), CFG, "y", seed=1)
    assert sum(len(p) for p in parts.values()) == 1000
    rates = [float((p["y"] == "pos").mean()) for p in parts.values()]
    assert max(rates) - min(rates) < 0.02, f"stratified splits keep the label rate: {rates}"


def test_split_is_deterministic() -> None:
    a = split_snapshot(snapshot(300, 0), CFG, "y", seed=3)
    b = split_snapshot(snapshot(300, 0), CFG, "y", seed=3)
    assert all(a[k].equals(b[k]) for k in a)


def test_row_in_two_splits_fails() -> None:
    frame = pd.DataFrame({"x": [1, 2]})
    with pytest.raises(DataError, match="both train and test"):
        check_disjoint({"train": frame, "test": frame.iloc[[1]]})


def test_too_few_rows_of_a_class_is_a_data_error() -> None:
    frame = snapshot(10, 0)
    frame["y"] = ["pos"] + ["neg"] * 9
    with pytest.raises(DataError, match="stratified"):
        split_snapshot(frame, CFG, "y", seed=0)
