"""Label leakage: real clean datasets are not flagged, a copy or function of the label is."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from retrain.config import DatasetConfig, load_params
from retrain.data.leakage import MIN_ROWS, feature_scores, leaks
from retrain.data.schema import infer_columns

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
THRESHOLD = PARAMS.validate_.leakage_threshold
CALIFORNIA = REPO / "data/source/california_housing.csv.gz"
"""Shipped with the repo (data/source/CALIFORNIA_PROVENANCE.md)."""


def adult() -> pd.DataFrame:
    """Both real Adult files (48,842 rows), typed like the snapshot."""
    text = {c: "str" for c in PARAMS.dataset.categorical} | {"income": "str"}
    parts = [
        pd.read_csv(
            REPO / "data/source" / name, na_values=["?"], keep_default_na=False, skipinitialspace=True, dtype=text
        )
        for name in ("adult_train.csv.gz", "adult_test.csv.gz")
    ]
    frame = pd.concat(parts, ignore_index=True)
    frame["income"] = frame["income"].str.removesuffix(".")
    return frame


def with_columns(dataset: DatasetConfig, frame: pd.DataFrame) -> DatasetConfig:
    """The dataset with its feature types inferred from the frame (as ingest does for `columns: null`)."""
    bare = dataset.model_copy(update={"columns": None})
    return DatasetConfig.model_validate({**dataset.model_dump(), "columns": infer_columns(frame, bare)})


def wine() -> tuple[pd.DataFrame, DatasetConfig]:
    frame = load_wine(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "class_0", 1: "class_1", 2: "class_2"})
    dataset = DatasetConfig(name="wine", task="multiclass", target="target", labels=("class_0", "class_1", "class_2"))
    return frame, with_columns(dataset, frame)


@pytest.mark.slow
def test_clean_adult_is_not_flagged_and_is_cheap() -> None:
    frame = adult()
    feature_scores(frame.head(500), PARAMS.dataset, 0)  # imports sklearn outside the timing
    started = time.perf_counter()
    result = feature_scores(frame, PARAMS.dataset, PARAMS.seed)
    seconds = time.perf_counter() - started
    assert result.metric == "roc_auc" and set(result.scores) == set(PARAMS.dataset.features)
    assert max(result.scores.values()) < THRESHOLD, f"clean Adult flagged: {result.scores}"
    assert max(result.scores.values()) > 0.7, "relationship / marital-status really do predict income well"
    assert seconds < 5.0, f"leakage check on 48k rows x 14 features took {seconds:.2f}s (budget ~2 s)"


@pytest.mark.slow
def test_copies_of_the_label_are_flagged_as_category_and_as_number() -> None:
    frame = adult().sample(5000, random_state=0)
    frame["income_copy"] = frame["income"]
    frame["income_flag"] = (frame["income"] == ">50K").astype(int)
    dataset = with_columns(PARAMS.dataset, frame)
    result = feature_scores(frame, dataset, 0)
    found = leaks(result, THRESHOLD)
    assert set(found) == {"income_copy", "income_flag"}, f"exactly the two copies leak: {result.scores}"
    assert all(score > 0.999 for score in found.values()), found


@pytest.mark.slow
def test_a_noisy_label_proxy_below_the_threshold_is_not_a_leak() -> None:
    frame = adult().sample(5000, random_state=0)
    rng = np.random.default_rng(0)
    flip = rng.random(len(frame)) < 0.15
    frame["proxy"] = np.where(flip, frame["income"] != ">50K", frame["income"] == ">50K").astype(int)
    result = feature_scores(frame, with_columns(PARAMS.dataset, frame), 0)
    assert 0.8 < result.scores["proxy"] < THRESHOLD, (
        f"a 15%-noisy proxy is a strong feature, not a copy: {result.scores}"
    )


def test_multiclass_wine_clean_and_with_a_copy() -> None:
    frame, dataset = wine()
    result = feature_scores(frame, dataset, PARAMS.seed)
    assert result.metric == "balanced_accuracy"
    assert max(result.scores.values()) < THRESHOLD, f"clean wine flagged: {result.scores}"
    frame["cls"] = frame["target"]
    result = feature_scores(frame, with_columns(dataset, frame), PARAMS.seed)
    assert leaks(result, THRESHOLD) == {"cls": 1.0}, result.scores


@pytest.mark.slow
def test_regression_california_clean_and_with_a_function_of_the_target() -> None:
    frame = pd.read_csv(CALIFORNIA)
    dataset = with_columns(DatasetConfig(name="cal", task="regression", target="median_house_value"), frame)
    result = feature_scores(frame, dataset, PARAMS.seed)
    assert result.metric == "r2"
    best = max(result.scores, key=result.scores.get)
    assert best == "median_income" and result.scores[best] < THRESHOLD, result.scores
    frame["log_value"] = np.log(frame["median_house_value"])
    result = feature_scores(frame, with_columns(dataset, frame), PARAMS.seed)
    assert list(leaks(result, THRESHOLD)) == ["log_value"], result.scores


def test_scores_are_seeded_and_tiny_data_is_skipped() -> None:
    frame, dataset = wine()
    assert feature_scores(frame, dataset, 3).scores == feature_scores(frame, dataset, 3).scores
    small = feature_scores(frame.head(MIN_ROWS - 1), dataset, 0)
    assert small.skipped and not small.scores, "too few rows to tell a leak from luck"
