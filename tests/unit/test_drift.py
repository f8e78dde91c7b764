"""PSI drift: zero on identical data, the textbook value on known shares, large on a real shift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import DatasetConfig, DriftConfig, load_params
from retrain.data.drift import EPSILON, category_counts, column_psi, feature_drift, numeric_counts, numeric_edges, psi

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
DRIFT = DriftConfig(action="block", psi_threshold=0.25, bins=10)


def adult(name: str = "adult_train.csv.gz") -> pd.DataFrame:
    text = {c: "str" for c in PARAMS.dataset.categorical} | {"income": "str"}
    return pd.read_csv(
        REPO / "data/source" / name, na_values=["?"], keep_default_na=False, skipinitialspace=True, dtype=text
    )


def test_psi_matches_the_formula() -> None:
    ref, cur = np.array([50.0, 50.0]), np.array([80.0, 20.0])
    smooth = lambda v: (v / v.sum() + EPSILON) / (1 + len(v) * EPSILON)  # noqa: E731
    r, c = smooth(ref), smooth(cur)
    assert math.isclose(psi(ref, cur), float(np.sum((c - r) * np.log(c / r))), rel_tol=1e-12)
    assert math.isclose(psi(ref, cur), 0.3 * math.log(0.8 / 0.5) - 0.3 * math.log(0.2 / 0.5), rel_tol=1e-3)
    assert psi(ref, ref) == 0.0
    assert math.isfinite(psi(np.array([10.0, 0.0]), np.array([0.0, 10.0]))), "empty bins are smoothed, not infinite"


def test_numeric_bins_are_reference_quantiles_with_a_null_bin() -> None:
    ref = pd.Series(np.arange(100.0))
    edges = numeric_edges(ref, 4)
    assert edges.tolist() == [24.75, 49.5, 74.25]
    counts = numeric_counts(pd.Series([0.0, 30.0, 60.0, 99.0, np.nan, 1e9]), edges)
    assert counts.tolist() == [1.0, 1.0, 1.0, 2.0, 1.0], "four quantile bins (last one open) plus nulls"
    assert numeric_edges(pd.Series([5.0] * 10), 10).tolist() == [5.0], "ties merge into one edge"


def test_categories_unseen_and_null_bins() -> None:
    counts = category_counts(pd.Series(["a", "b", "zzz", None, "a"]), ["a", "b"])
    assert counts.tolist() == [2.0, 1.0, 1.0, 1.0], "a, b, other (unseen), missing"
    shifted = column_psi(pd.Series(["a"] * 50 + ["b"] * 50), pd.Series(["zzz"] * 100), numeric=False, bins=10)
    assert shifted > 5, "all-new categories are a large shift"


@pytest.mark.slow
def test_adult_train_vs_test_is_stable_and_an_age_shift_is_caught() -> None:
    train, test = adult(), adult("adult_test.csv.gz")
    stable = feature_drift(train, test, PARAMS.dataset, DRIFT)
    assert stable["drifted"] == [] and stable["max_psi"] < 0.05, stable["features"]
    older = test[test["age"] > 40]
    shifted = feature_drift(train, older, PARAMS.dataset, DRIFT)
    assert shifted["drifted"][0] == "age", f"age moves most: {shifted['drifted']}"
    assert shifted["features"]["age"]["psi"] > 1.0
    assert {"marital-status", "relationship"} <= set(shifted["drifted"]), "age drags its correlates along"


def test_a_feature_missing_from_the_reference_is_noted_not_scored() -> None:
    dataset = DatasetConfig(
        name="d", task="regression", target="y", columns={"a": {"type": "float"}, "b": {"type": "category"}}
    )
    reference = pd.DataFrame({"a": np.arange(100.0)})
    current = pd.DataFrame({"a": np.arange(100.0), "b": ["x"] * 100})
    table = feature_drift(reference, current, dataset, DRIFT)
    assert table["features"]["b"] == {
        "type": "category",
        "psi": None,
        "drifted": False,
        "note": "not in the reference snapshot",
    }
    assert table["features"]["a"]["psi"] == 0.0 and table["max_psi"] == 0.0
