"""Fairness gate: group rates checked by hand, a model built on `sex` fails, a model ignoring it passes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from retrain.config import FairnessGate
from retrain.evaluation.fairness import fairness_gate, group_table
from retrain.models.estimators import build_model, pipeline_scores

NUMERIC, CATEGORICAL = ["x1"], ["sex", "race"]
LGBM = {"n_estimators": 50, "verbose": -1, "deterministic": True, "n_jobs": 1}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: the cores are shared."""
    with threadpool_limits(limits=1):
        yield


def rows(n: int, seed: int, biased: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Labels from x1 only (fair) or mostly from sex (biased); race is a rare-group attribute."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "sex": pd.Series(rng.choice(["F", "M"], size=n), dtype="str"),
            "race": pd.Series(rng.choice(["a", "b", "rare"], size=n, p=[0.6, 0.38, 0.02]), dtype="str"),
        }
    )
    logit = 0.5 * X["x1"] + 2.5 * (X["sex"] == "M") - 1.5 if biased else 2.0 * X["x1"]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int).to_numpy()
    return X, y


def scored(biased: bool) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A real LightGBM trained on 600 rows, scored on 1000 fresh rows."""
    X, y = rows(600, 0, biased)
    model = build_model("lightgbm", LGBM, NUMERIC, CATEGORICAL).fit(X, y)
    X_test, y_test = rows(1000, 1, biased)
    return X_test, y_test, pipeline_scores(model, X_test, "binary", 2)


CFG = FairnessGate(max_demographic_parity_difference=0.1, max_equalized_odds_difference=0.15, min_rows=30)


def test_group_table_matches_hand_counts() -> None:
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    predicted = np.array([1, 1, 0, 0, 1, 1, 1, 0])
    group = pd.Series(["F", "F", "F", "F", "M", "M", "M", None])
    table = group_table(y, predicted, group, min_rows=3)
    assert table["F"] == {"rows": 4, "gated": True, "selection_rate": 0.5, "tpr": 0.5, "fpr": 0.5}, table
    assert table["M"] == {"rows": 3, "gated": True, "selection_rate": 1.0, "tpr": 1.0, "fpr": 1.0}, table
    assert sum(r["rows"] for r in table.values()) == 7, "a missing attribute value belongs to no group"


def test_fair_model_passes_and_biased_model_fails() -> None:
    X, y, p = scored(biased=False)
    fair = fairness_gate(y, p, {"sex": X["sex"], "race": X["race"]}, task="binary", cfg=CFG)
    assert fair.passed and fair.name == "fairness", fair.reason
    race = fair.details["attributes"]["race"]["groups"]
    assert not race["rare"]["gated"] and race["rare"]["rows"] < 30, "groups under min_rows are listed, not gated"
    X, y, p = scored(biased=True)
    biased = fairness_gate(y, p, {"sex": X["sex"], "race": X["race"]}, task="binary", cfg=CFG)
    assert not biased.passed and biased.details["worst"]["attribute"] == "sex", biased.reason
    sex = biased.details["attributes"]["sex"]
    selection = {g: ((p >= 0.5) & (X["sex"] == g).to_numpy()).sum() / (X["sex"] == g).sum() for g in ("F", "M")}
    assert sex["demographic_parity_difference"] == pytest.approx(abs(selection["M"] - selection["F"]), abs=1e-5)
    assert biased.value > 0.3 and "sex:" in biased.reason and "> max" in biased.reason, biased.reason
    json.dumps(biased.to_dict(), allow_nan=False)  # the gate record must stay strict JSON


def test_threshold_changes_predictions() -> None:
    X, y, p = scored(biased=True)
    low = fairness_gate(y, p, {"sex": X["sex"]}, task="binary", cfg=FairnessGate(threshold=0.01))
    assert low.details["attributes"]["sex"]["demographic_parity_difference"] < 0.2, "almost everyone selected"


def test_applicability() -> None:
    y, p = np.array([0, 1]), np.array([0.2, 0.8])
    group = {"sex": pd.Series(["F", "M"])}
    assert fairness_gate(y, p, group, task="multiclass", cfg=CFG).skipped
    assert fairness_gate(y, p, group, task="regression", cfg=CFG).skipped
    none = fairness_gate(y, p, {}, task="binary", cfg=CFG)
    assert none.skipped and "no protected attributes" in none.reason
    small = fairness_gate(y, p, group, task="binary", cfg=CFG)
    assert small.skipped and "two groups with >= 30" in small.reason, small.reason
    nan = fairness_gate(y, np.array([np.nan, 0.5]), group, task="binary", cfg=CFG)
    assert not nan.passed and not nan.skipped, nan.reason


def test_group_rates_match_a_pandas_groupby() -> None:
    """The bincount rates equal an independent groupby (fairlearn's MetricFrame agrees too: benchmarks/)."""
    X, y, p = scored(biased=True)
    predicted = (p >= 0.5).astype(int)
    table = group_table(y, predicted, X["race"], min_rows=30)
    frame = pd.DataFrame({"g": X["race"], "y": y, "p": predicted})
    for name, rows in frame.groupby("g"):
        expected = {
            "rows": len(rows),
            "selection_rate": rows["p"].mean(),
            "tpr": rows.loc[rows["y"] == 1, "p"].mean(),
            "fpr": rows.loc[rows["y"] == 0, "p"].mean(),
        }
        for key, value in expected.items():
            assert table[name][key] == pytest.approx(value, abs=5e-7), f"{name} {key}: {table[name]} vs {expected}"


def test_a_rate_without_rows_is_undefined_not_zero() -> None:
    """Unlike fairlearn (TPR 0.0), a group with no positives has no TPR and stays out of the TPR range."""
    y, predicted = np.array([0, 0, 1, 1]), np.array([1, 0, 1, 0])
    table = group_table(y, predicted, pd.Series(["a", "a", "b", "b"]), min_rows=1)
    assert table["a"]["tpr"] is None and table["b"]["fpr"] is None, table
    cfg = FairnessGate(min_rows=2, max_demographic_parity_difference=1.0, max_equalized_odds_difference=0.1)
    gate = fairness_gate(y, predicted / 1.0, {"g": pd.Series(["a", "a", "b", "b"])}, task="binary", cfg=cfg)
    entry = gate.details["attributes"]["g"]
    assert entry["equalized_odds_difference"] == 0.0 and gate.passed, f"no defined pair, no gap: {gate.reason}"
