"""End to end: group-aware and time-ordered splits through the real flow (a non-feature column kept for the split)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> Path:
    """Adult rows with a `household` id (groups) and a `week` number (time), neither a feature."""
    params = small_params(
        candidates={"families": ["lightgbm"], "n_trials": 1, "cv_folds": 3},
        ingest={"test_source": None, "sample_rows": None},
        promote={"model_name": "adult-split-modes"},
    )
    root = make_project(tmp_path_factory.mktemp("splits") / "proj", params)
    with gzip.open(root / "data/source/adult_train.csv.gz", "rt") as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False, nrows=3000)
    rng = np.random.default_rng(7)
    frame["household"] = rng.integers(0, 400, size=len(frame)).astype(str)
    frame["week"] = rng.integers(1, 53, size=len(frame))
    frame.to_csv(root / "data/source/adult_households.csv", index=False)
    return root


def splits(root: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(root / f"data/processed/{name}.parquet") for name in ("train", "valid", "test")}


def test_group_split_keeps_each_household_in_one_split(project: Path, use_root) -> None:
    use_root(project)
    source = "ingest.source=data/source/adult_households.csv"
    code = main(["run", "--set", source, "--set", "split.group_column=household", "--set", "dataset.exclude=[week]"])
    assert code == 0
    parts = splits(project)
    owners: dict[str, set[str]] = {}
    for name, part in parts.items():
        for household in part["household"].unique():
            owners.setdefault(household, set()).add(name)
    shared = {h: s for h, s in owners.items() if len(s) > 1}
    assert not shared, f"households in two splits: {list(shared.items())[:5]}"
    assert all(len(p) > 100 for p in parts.values()), {n: len(p) for n, p in parts.items()}


def test_time_split_trains_on_the_past_and_tests_on_the_future(project: Path, use_root) -> None:
    use_root(project)
    source = "ingest.source=data/source/adult_households.csv"
    code = main(["run", "--set", source, "--set", "split.time_column=week", "--set", "dataset.exclude=[household]"])
    assert code in (0, 3), "completes (the champion from the grouped run may win the gate)"
    parts = splits(project)
    assert parts["train"]["week"].max() < parts["valid"]["week"].min(), "valid is later than train"
    assert parts["valid"]["week"].max() < parts["test"]["week"].min(), "test is later than valid"
    assert parts["train"]["week"].is_monotonic_increasing, "train stays in time order for time-series CV"
