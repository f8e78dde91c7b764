"""Given a snapshot, split gives disjoint parts: stratified, random (regression), grouped or time-ordered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.config import DatasetConfig, SplitConfig
from retrain.data.ingest import SOURCE_COLUMN
from retrain.data.split import (
    check_disjoint,
    label_codes,
    split_snapshot,
)
from retrain.errors import DataError

CFG = SplitConfig(valid_size=0.25, test_size=0.2)
BINARY = DatasetConfig(
    name="t", task="binary", target="y", labels=("neg", "pos"), positive_label="pos", columns={"x": {"type": "float"}}
)
REGRESSION = DatasetConfig(name="t", task="regression", target="y", columns={"x": {"type": "float"}})


def snapshot(n_main: int, n_test: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_main + n_test
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": np.where(rng.random(n) < 0.3, "pos", "neg"),
            "customer": rng.integers(0, 60, size=n),
            "day": rng.integers(0, 200, size=n),
            SOURCE_COLUMN: ["main"] * n_main + ["test"] * n_test,
        }
    )


def test_declared_test_source_is_the_test_split() -> None:
    parts = split_snapshot(snapshot(400, 100), CFG, BINARY, seed=1)
    assert len(parts["test"]) == 100
    assert len(parts["train"]) + len(parts["valid"]) == 400
    assert SOURCE_COLUMN not in parts["train"].columns


def test_without_test_source_test_is_carved_and_stratified() -> None:
    parts = split_snapshot(snapshot(1000, 0), CFG, BINARY, seed=1)
    assert sum(len(p) for p in parts.values()) == 1000
    rates = [float((p["y"] == "pos").mean()) for p in parts.values()]
    assert max(rates) - min(rates) < 0.02, f"stratified splits keep the label rate: {rates}"


def test_regression_target_is_split_at_random() -> None:
    frame = snapshot(500, 0)
    frame["y"] = np.linspace(0.0, 1.0, len(frame))
    parts = split_snapshot(frame, CFG, REGRESSION, seed=1)
    assert sum(len(p) for p in parts.values()) == 500
    assert abs(parts["test"]["y"].mean() - 0.5) < 0.1, "a random split, not a sorted cut"


def test_split_is_deterministic() -> None:
    a = split_snapshot(snapshot(300, 0), CFG, BINARY, seed=3)
    b = split_snapshot(snapshot(300, 0), CFG, BINARY, seed=3)
    assert all(a[k].equals(b[k]) for k in a)


def test_group_split_keeps_every_group_in_one_split() -> None:
    cfg = SplitConfig(valid_size=0.25, test_size=0.2, group_column="customer")
    parts = split_snapshot(snapshot(1200, 0), cfg, BINARY, seed=2)
    groups = {name: set(part["customer"]) for name, part in parts.items()}
    assert not groups["train"] & groups["valid"], "a customer is in train and valid"
    assert not groups["train"] & groups["test"], "a customer is in train and test"
    assert not groups["valid"] & groups["test"], "a customer is in valid and test"
    assert all(len(p) for p in parts.values())


def test_declared_test_sharing_a_group_with_train_fails() -> None:
    cfg = SplitConfig(valid_size=0.25, test_size=0.2, group_column="customer")
    with pytest.raises(DataError, match="group customer="):
        split_snapshot(snapshot(400, 100), cfg, BINARY, seed=2)


def test_time_split_puts_later_rows_in_valid_then_test() -> None:
    cfg = SplitConfig(valid_size=0.25, test_size=0.2, time_column="day")
    parts = split_snapshot(snapshot(1000, 0), cfg, BINARY, seed=2)
    assert parts["train"]["day"].max() < parts["valid"]["day"].min(), "valid is later than train"
    assert parts["valid"]["day"].max() < parts["test"]["day"].min(), "test is later than valid"
    assert parts["train"]["day"].is_monotonic_increasing, "train is in time order for time-series CV"


def test_time_column_as_date_text_is_parsed() -> None:
    frame = snapshot(300, 0)
    frame["day"] = (pd.Timestamp("2024-01-01") + pd.to_timedelta(frame["day"], unit="D")).dt.strftime("%Y-%m-%d")
    cfg = SplitConfig(valid_size=0.25, test_size=0.2, time_column="day")
    parts = split_snapshot(frame, cfg, BINARY, seed=2)
    assert parts["train"]["day"].max() < parts["test"]["day"].min()


def test_declared_test_earlier_than_train_fails() -> None:
    frame = snapshot(300, 100)
    frame.loc[frame[SOURCE_COLUMN] == "test", "day"] = -1
    cfg = SplitConfig(valid_size=0.25, test_size=0.2, time_column="day")
    with pytest.raises(DataError, match="test must be later than valid"):
        split_snapshot(frame, cfg, BINARY, seed=2)


def test_row_in_two_splits_fails() -> None:
    frame = pd.DataFrame({"x": [1, 2]})
    with pytest.raises(DataError, match="both train and test"):
        check_disjoint({"train": frame, "test": frame.iloc[[1]]})


def test_too_few_rows_of_a_class_is_a_data_error() -> None:
    frame = snapshot(10, 0)
    frame["y"] = ["pos"] + ["neg"] * 9
    with pytest.raises(DataError, match="stratified"):
        split_snapshot(frame, CFG, BINARY, seed=0)


def test_row_in_two_splits_names_the_first_repeat_and_its_first_split() -> None:
    frame = pd.DataFrame({"x": range(6)})
    parts = {"train": frame.iloc[[0, 1, 2]], "valid": frame.iloc[[3, 4]], "test": frame.iloc[[5, 4, 1]]}
    with pytest.raises(DataError, match="snapshot row 4 is in both valid and test"):
        check_disjoint(parts)
    check_disjoint({"train": frame.iloc[[0, 2]], "valid": frame.iloc[[1]], "test": frame.iloc[[3, 4, 5]]})


def test_label_codes_give_the_cut_the_labels_give() -> None:
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(3)
    labels = pd.Series(rng.choice(["<=50K", ">50K", "b", "A"], size=5000, p=[0.5, 0.2, 0.2, 0.1])).astype("str")
    codes = label_codes(labels)
    assert isinstance(codes, np.ndarray) and codes.dtype.kind == "i"
    by_text = train_test_split(np.arange(5000), test_size=0.2, random_state=42, stratify=labels.to_numpy(dtype=object))
    by_code = train_test_split(np.arange(5000), test_size=0.2, random_state=42, stratify=codes)
    for text_part, code_part in zip(by_text, by_code, strict=True):
        np.testing.assert_array_equal(text_part, code_part)
    with_missing = pd.Series(["a", None, "b"], dtype="str")
    assert label_codes(with_missing) is with_missing, "missing labels: passed as they are"
