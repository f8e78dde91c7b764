"""Behavioural gates pass well-behaved real models and fail models built to break each expectation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from retrain.config import DirectionalGate, InvarianceGate, PerturbationGate
from retrain.errors import ConfigError
from retrain.evaluation.behaviour import directional_gate, invariance_gate, perturbation_gate
from retrain.models.estimators import build_model, pipeline_scores

NUMERIC, CATEGORICAL = ["x1", "x2", "code"], ["sex", "color"]
LGBM = {"n_estimators": 60, "learning_rate": 0.1, "verbose": -1, "deterministic": True, "n_jobs": 1, "seed": 0}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: the cores are shared."""
    with threadpool_limits(limits=1):
        yield


def rows(n: int, seed: int) -> pd.DataFrame:
    """Features: two smooth numerics, an integer code, a protected `sex` and a nuisance `color`."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "code": rng.integers(0, 60, size=n),
            "sex": pd.Series(rng.choice(["F", "M"], size=n), dtype="str"),
            "color": pd.Series(rng.choice(["a", "b", "c"], size=n), dtype="str"),
        }
    )
    X.loc[::41, "color"] = None
    return X


def target(X: pd.DataFrame, kind: str, seed: int) -> np.ndarray:
    """fair: x1 + x2 (sex irrelevant); inverted: x1's effect reversed (a data bug); biased: mostly sex;
    parity: code's parity (an exact-value rule)."""
    rng = np.random.default_rng(seed + 100)
    noise = rng.normal(scale=0.5, size=len(X))
    if kind in ("fair", "inverted"):
        sign = 1.0 if kind == "fair" else -1.0
        return ((sign * X["x1"] + 0.5 * X["x2"] + noise) > 0).astype(int).to_numpy()
    if kind == "biased":
        return ((0.5 * X["x1"] + 2.0 * (X["sex"] == "M") + noise) > 1.0).astype(int).to_numpy()
    flip = rng.random(len(X)) < 0.05
    return ((X["code"] % 2 == 0).to_numpy() ^ flip).astype(int)


def fitted(kind: str, task: str = "binary", **extra: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """score_fn of a real LightGBM pipeline trained on 600 rows of the given target."""
    X = rows(600, seed=1)
    y = target(X, kind, seed=1)
    if task == "regression":
        y = (X["x1"] + 0.5 * X["x2"] + (3.0 * (X["sex"] == "M") if kind == "biased" else 0.0)).to_numpy(float)
    model = build_model("lightgbm", {**LGBM, **extra}, NUMERIC, CATEGORICAL, task=task).fit(X, y)
    return lambda frame: pipeline_scores(model, frame, task, 2)


TEST = rows(800, seed=2)


def test_perturbation_passes_a_smooth_model_and_fails_an_exact_value_rule() -> None:
    cfg = PerturbationGate(noise_std=0.1, swap_rate=0.05, max_drop=0.02)
    smooth = perturbation_gate(
        fitted("fair"),
        TEST,
        target(TEST, "fair", 2),
        metric="roc_auc",
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        cfg=cfg,
        seed=0,
    )
    assert smooth.passed and smooth.name == "perturbation", smooth.reason
    changed = smooth.details["features"]["x1"]["rows_changed"]
    assert len(TEST) - 5 <= changed < len(TEST), f"every x1 changes except the extremes clipped to the range: {changed}"
    parity_fn = fitted("parity", min_child_samples=2, num_leaves=63, n_estimators=200)
    y = target(TEST, "parity", 2)
    fragile = perturbation_gate(
        parity_fn, TEST, y, metric="roc_auc", numeric=NUMERIC, categorical=CATEGORICAL, cfg=cfg, seed=0
    )
    assert fragile.details["clean"] > 0.85, f"the parity model must work on clean rows: {fragile.details}"
    assert not fragile.passed and fragile.value > 0.2, fragile.reason
    assert "most fragile feature code" in fragile.reason, fragile.reason
    json.dumps(fragile.to_dict(), allow_nan=False)  # the gate record must stay strict JSON
    no_noise = perturbation_gate(
        parity_fn,
        TEST,
        y,
        metric="roc_auc",
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        cfg=PerturbationGate(noise_std=0.0, swap_rate=0.0),
        seed=0,
    )
    assert no_noise.passed and no_noise.value == 0.0, f"nothing perturbed, nothing dropped: {no_noise.reason}"


def test_perturbation_is_seeded_keeps_ints_and_respects_lower_is_better() -> None:
    cfg = PerturbationGate(noise_std=0.5, swap_rate=0.3, max_drop=1.0)
    seen: list[pd.DataFrame] = []
    base = fitted("fair")

    def spy(frame: pd.DataFrame) -> np.ndarray:
        seen.append(frame)
        return base(frame)

    y = target(TEST, "fair", 2)
    a = perturbation_gate(spy, TEST, y, metric="log_loss", numeric=NUMERIC, categorical=CATEGORICAL, cfg=cfg, seed=3)
    b = perturbation_gate(base, TEST, y, metric="log_loss", numeric=NUMERIC, categorical=CATEGORICAL, cfg=cfg, seed=3)
    assert a.value == b.value and a.details == b.details, "same seed, same result"
    noised = seen[1]
    assert noised["code"].dtype == TEST["code"].dtype, "integer columns stay integers"
    assert (noised["code"] != TEST["code"]).mean() > 0.5, "integer columns are noised (rounded), not left alone"
    swapped = (noised["sex"] != TEST["sex"]).mean()
    assert 0.2 < swapped < 0.4, f"categories swap at about swap_rate (always to another value): {swapped}"
    assert noised["color"].isna().sum() == TEST["color"].isna().sum(), "missing values stay missing"
    assert len(seen) == 2 + len(NUMERIC) + len(CATEGORICAL), "one score call per feature, not per row"
    rise = a.details["perturbed"] - a.details["clean"]
    assert a.value == pytest.approx(rise, abs=1e-5), "log_loss (lower is better): the drop is the rise in loss"


def test_invariance_passes_a_model_ignoring_sex_and_fails_one_built_on_it() -> None:
    cfg = InvarianceGate(max_flip_rate=0.05, max_mean_abs_delta=0.05)
    fair = invariance_gate(fitted("fair"), TEST, attributes=["sex"], task="binary", cfg=cfg)
    assert fair.passed, fair.reason
    biased = invariance_gate(fitted("biased"), TEST, attributes=["sex", "color"], task="binary", cfg=cfg)
    assert not biased.passed and biased.details["worst"]["attribute"] == "sex", biased.reason
    table = biased.details["attributes"]["sex"]["values"]
    assert table["M"]["rows"] == int((TEST["sex"] == "F").sum()), "only rows whose value changes count"
    assert biased.details["worst_flip_rate"] > 0.3, biased.details
    assert "sex set to" in biased.reason, biased.reason
    json.dumps(biased.to_dict(), allow_nan=False)  # the gate record must stay strict JSON


def test_invariance_multiclass_regression_and_missing_attribute() -> None:
    cfg = InvarianceGate(max_flip_rate=0.05, max_mean_abs_delta=0.1)
    X = rows(600, seed=1)
    y = np.digitize(X["x1"] + 1.5 * (X["sex"] == "M"), [0.0, 1.0])
    model = build_model("lightgbm", LGBM, NUMERIC, CATEGORICAL, task="multiclass").fit(X, y)
    multi = invariance_gate(
        lambda f: pipeline_scores(model, f, "multiclass", 3), TEST, attributes=["sex"], task="multiclass", cfg=cfg
    )
    assert not multi.passed and multi.details["worst_flip_rate"] > 0.2, multi.reason
    y_std = 1.5
    regression = invariance_gate(
        fitted("biased", task="regression"),
        TEST,
        attributes=["sex", "absent"],
        task="regression",
        cfg=cfg,
        y_std=y_std,
    )
    assert not regression.passed and regression.metric == "mean_abs_delta", regression.reason
    assert regression.value == pytest.approx(3.0 / y_std, rel=0.25), "delta is in target std units"
    assert "not a model input" in regression.details["attributes"]["absent"]["note"]
    fair = invariance_gate(
        fitted("fair", task="regression"), TEST, attributes=["sex"], task="regression", cfg=cfg, y_std=y_std
    )
    assert fair.passed and fair.details["worst_flip_rate"] == 0.0, fair.reason
    none = invariance_gate(fitted("fair"), TEST, attributes=[], task="binary", cfg=cfg)
    assert none.skipped and "no protected attributes" in none.reason


def test_directional_fails_a_model_forced_the_wrong_way() -> None:
    """monotone -1 on data where x1 truly helps gives a flat (compliant) model, so the failing model also
    learns from labels where x1's effect was reversed: it lowers P(positive) whenever x1 rises."""
    cfg = DirectionalGate(increasing=("x1",), decreasing=(), step_std=0.5, max_violation_rate=0.01)
    right = fitted("fair", monotone_constraints=[1, 0, 0, 0, 0])
    wrong = fitted("inverted", monotone_constraints=[-1, 0, 0, 0, 0])
    good = directional_gate(right, TEST, task="binary", cfg=cfg)
    assert good.passed and good.value == 0.0, good.reason
    bad = directional_gate(wrong, TEST, task="binary", cfg=cfg)
    assert not bad.passed and bad.value > 0.3, bad.reason
    assert bad.reason.startswith("x1 +"), bad.reason
    json.dumps(bad.to_dict(), allow_nan=False)  # the gate record must stay strict JSON
    reverse = directional_gate(
        wrong, TEST, task="binary", cfg=DirectionalGate(decreasing=("x1",), max_violation_rate=0.01)
    )
    assert reverse.passed, f"declared decreasing, the constrained model complies: {reverse.reason}"


def test_directional_integer_step_missing_rows_and_applicability() -> None:
    seen: list[pd.DataFrame] = []
    base = fitted("fair")

    def spy(frame: pd.DataFrame) -> np.ndarray:
        seen.append(frame)
        return base(frame)

    X = TEST.copy()
    X.loc[:99, "x2"] = np.nan
    cfg = DirectionalGate(increasing=("code",), decreasing=("x2",), step_std=0.01, max_violation_rate=1.0)
    result = directional_gate(spy, X, task="binary", cfg=cfg)
    assert result.details["features"]["code"]["step"] == 1.0, "integer columns step by at least 1"
    assert (seen[1]["code"] - X["code"] == 1).all(), "the integer column is raised by exactly the step"
    assert result.details["features"]["x2"]["rows"] == len(X) - 100, "rows with the feature missing do not count"
    assert directional_gate(spy, X, task="multiclass", cfg=cfg).skipped, "multiclass has no single score"
    assert directional_gate(spy, X, task="binary", cfg=DirectionalGate()).skipped, "nothing declared: skipped"
    with pytest.raises(ConfigError, match="sex"):
        directional_gate(spy, X, task="binary", cfg=DirectionalGate(increasing=("sex",)))


def test_perturbation_on_regression_and_multiclass_metrics() -> None:
    cfg = PerturbationGate(noise_std=0.5, swap_rate=0.0, max_drop=0.02)
    y = (TEST["x1"] + 0.5 * TEST["x2"]).to_numpy(float)
    regression = perturbation_gate(
        fitted("fair", task="regression"),
        TEST,
        y,
        metric="rmse",
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        cfg=cfg,
        seed=0,
    )
    assert not regression.passed and regression.details["perturbed"] > regression.details["clean"], regression.reason
    assert regression.details["features"]["sex"]["rows_changed"] == 0, "swap_rate 0 leaves categories alone"
    X = rows(600, seed=1)
    model = build_model("lightgbm", LGBM, NUMERIC, CATEGORICAL, task="multiclass").fit(X, np.digitize(X["x1"], [0, 1]))
    multi = perturbation_gate(
        lambda f: pipeline_scores(model, f, "multiclass", 3),
        TEST,
        np.digitize(TEST["x1"], [0, 1]),
        metric="roc_auc_ovr",
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        cfg=cfg,
        seed=0,
    )
    assert multi.value > 0.02 and "most fragile feature x1" in multi.reason, multi.reason
