"""Given scores, each gate passes or fails in the metric's direction with its value, threshold and reason."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from retrain.config import ChampionGate, MetricBoundsGate, PerturbationGate, SlicesGate
from retrain.evaluation.behaviour import perturbation_bound, perturbation_gate
from retrain.evaluation.gates import (
    _weighted_auc,
    beats_baselines,
    decide,
    metric_bounds,
    metric_is_finite,
    no_regression_bootstrap,
    slice_keys,
    slice_table,
    slices_gate,
)


def test_beats_baselines_margin() -> None:
    base = {"most_frequent": 0.5, "uniform": 0.52}
    ok = beats_baselines("roc_auc", 0.8, base, margin=0.05)
    assert ok.passed and "uniform" in ok.reason, ok.reason
    bad = beats_baselines("roc_auc", 0.55, base, margin=0.05)
    assert not bad.passed and bad.value == 0.55, "value is the real metric value"
    assert bad.threshold == pytest.approx(0.57) and bad.direction == "higher_is_better", bad


def test_beats_baselines_lower_is_better() -> None:
    base = {"mean": 100.0, "median": 95.0}
    ok = beats_baselines("rmse", 60.0, base, margin=10.0)
    assert ok.passed and "median" in ok.reason, f"the best rmse baseline is the lowest: {ok.reason}"
    assert ok.threshold == 85.0 and ok.direction == "lower_is_better" and ok.metric == "rmse", ok
    bad = beats_baselines("rmse", 90.0, base, margin=10.0)
    assert not bad.passed and "does not beat" in bad.reason, bad.reason
    assert not beats_baselines("log_loss", 0.7, {"uniform": 0.69}, margin=0.0).passed, "a higher loss loses"


def test_paired_bootstrap_on_regression_metrics_in_their_direction() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(100.0, 20.0, 800)
    good, bad = y + rng.normal(0, 5.0, 800), y + rng.normal(0, 15.0, 800)
    cfg = ChampionGate(tolerance=0.0, resamples=100)
    for metric in ("mae", "rmse", "r2"):
        assert no_regression_bootstrap(cfg, metric, y, good, bad, seed=0).passed, f"{metric}: a better candidate passes"
        worse = no_regression_bootstrap(cfg, metric, y, bad, good, seed=0)
        assert not worse.passed and worse.threshold == 0.0, f"{metric}: a worse candidate fails: {worse.reason}"
    lenient = ChampionGate(tolerance=10.0, resamples=100)
    assert no_regression_bootstrap(lenient, "mae", y, bad, good, seed=0).passed, "~8 worse is within tolerance 10"


def test_nan_metric_fails_every_comparison() -> None:
    for metric in ("roc_auc", "rmse"):
        assert not metric_is_finite(metric, math.nan).passed, metric
        assert not beats_baselines(metric, math.nan, {"u": 0.5}, 0.0).passed, metric
    y, good, _ = scored(400)
    broken = good.copy()
    broken[3] = math.nan
    nan = no_regression_bootstrap(ChampionGate(resamples=50), "roc_auc", y, broken, good, seed=0)
    assert not nan.passed and "not finite" in nan.reason, nan.reason
    assert not beats_baselines("r2", 0.9, {"mean": math.nan}, 0.0).passed, "no finite baseline: cannot pass"


def test_decide_lists_failed_gates() -> None:
    gates = [metric_is_finite("roc_auc", 0.8), beats_baselines("roc_auc", 0.51, {"u": 0.5}, 0.05)]
    assert decide(gates) == ("reject", ["beats_baselines"])
    assert decide(gates[:1]) == ("promote", [])


def scored(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a good model's scores and a clearly worse model's scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    good = np.clip(0.25 + 0.4 * y + rng.normal(0, 0.2, n), 0.001, 0.999)
    worse = np.clip(0.25 + 0.15 * y + rng.normal(0, 0.2, n), 0.001, 0.999)
    return y, good, worse


def test_weighted_auc_matches_sklearn_on_a_resample() -> None:
    y, good, _ = scored(1000)
    idx = np.random.default_rng(3).integers(0, len(y), len(y))
    counts = np.bincount(idx, minlength=len(y))[None, :].astype(float)
    rounded = np.round(good, 2)  # ties are counted half, as sklearn does
    assert _weighted_auc(y, rounded, counts)[0] == pytest.approx(roc_auc_score(y[idx], rounded[idx]), abs=1e-12)


def test_paired_bootstrap_passes_an_equal_model_and_rejects_a_worse_one() -> None:
    y, good, worse = scored()
    cfg = ChampionGate(tolerance=0.002, resamples=200)
    same = no_regression_bootstrap(cfg, "roc_auc", y, good, good.copy(), seed=0)
    assert same.passed and same.details["ci_low"] == 0.0 == same.details["ci_high"], same.reason
    bad = no_regression_bootstrap(cfg, "roc_auc", y, worse, good, seed=0)
    assert not bad.passed and bad.details["ci_high"] < 0, f"a clearly worse candidate fails: {bad.reason}"
    assert "may be worse" in bad.reason and bad.threshold == -0.002, bad.reason
    better = no_regression_bootstrap(cfg, "roc_auc", y, good, worse, seed=0)
    assert better.passed and better.value > 0, better.reason
    again = no_regression_bootstrap(cfg, "roc_auc", y, worse, good, seed=0)
    assert again.details == bad.details, "seeded: the same resamples give the same interval"


def test_paired_bootstrap_lower_is_better_metric_and_first_run_policy() -> None:
    y, good, worse = scored(600)
    cfg = ChampionGate(tolerance=0.0, resamples=60)
    assert not no_regression_bootstrap(cfg, "log_loss", y, worse, good, seed=1).passed, "a higher loss regresses"
    assert no_regression_bootstrap(cfg, "log_loss", y, good, worse, seed=1).passed
    first = no_regression_bootstrap(cfg, "roc_auc", y, good, None, seed=1)
    assert first.passed and "first-run policy 'promote'" in first.reason, first.reason
    strict = no_regression_bootstrap(cfg.model_copy(update={"first_run": "reject"}), "roc_auc", y, good, None, seed=1)
    assert not strict.passed, "first_run: reject refuses to promote without a champion"


def test_metric_bounds() -> None:
    cfg = MetricBoundsGate(min={"roc_auc": 0.85}, max={"log_loss": 0.4})
    assert metric_bounds(cfg, {"roc_auc": 0.9, "log_loss": 0.3}).passed
    low = metric_bounds(cfg, {"roc_auc": 0.8, "log_loss": 0.3})
    assert not low.passed and low.metric == "roc_auc" and low.threshold == 0.85, low
    assert not metric_bounds(cfg, {"roc_auc": math.nan, "log_loss": 0.3}).passed, "NaN never meets a bound"
    assert metric_bounds(MetricBoundsGate(), {"roc_auc": 0.5}).skipped, "no bounds: skipped, not passed silently"


def test_slice_bands_and_gap_and_champion_drop() -> None:
    age = pd.Series([20, 29, 30, 44, 45, 70, None], dtype="float")
    assert list(slice_keys(age, [30, 45])) == ["< 30", "< 30", "30-45", "30-45", ">= 45", ">= 45", "(missing)"]
    y, good, _ = scored(2000)
    X = pd.DataFrame({"group": np.where(np.arange(2000) < 1000, "a", "b")})
    hurt = good.copy()
    hurt[1000:] = np.random.default_rng(2).random(1000)  # slice b: no signal
    table = slice_table(X, ["group"], {}, "roc_auc", y, hurt, min_rows=30)
    overall = roc_auc_score(y, hurt)
    gate = slices_gate(SlicesGate(max_gap=0.05), "roc_auc", overall, table, None)
    assert not gate.passed and gate.details["worst_gap_slice"] == "group=b", gate.reason
    champion = slice_table(X, ["group"], {}, "roc_auc", y, good, min_rows=30)
    vs = slices_gate(SlicesGate(max_gap=1.0, champion_tolerance=0.01), "roc_auc", overall, table, champion)
    assert not vs.passed and "group=b" in vs.reason and vs.details["worst_drop"] > 0.3, vs.reason
    small = slice_table(X, ["group"], {}, "roc_auc", y, hurt, min_rows=5000)
    assert slices_gate(SlicesGate(), "roc_auc", overall, small, None).skipped, "no slice big enough: skipped"


# ------------------------------------------------- perturbation: the bound as a share of the lift over baselines


def noisy_rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Two numeric features and a binary target driven by x1 (so noise on x1 costs AUC)."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    y = (X["x1"] + rng.normal(scale=0.3, size=n) > 0).astype(int).to_numpy()
    return X, y


def sharp(X: pd.DataFrame) -> np.ndarray:
    """A steep logistic score on x1: a plain, real scoring function."""
    return 1.0 / (1.0 + np.exp(-4.0 * X["x1"].to_numpy(dtype=float)))


PERTURB = {"numeric": ["x1", "x2"], "categorical": [], "seed": 0}


def test_perturbation_bound_is_a_share_of_the_lift_over_the_best_baseline() -> None:
    X, y = noisy_rows(2000, seed=4)
    clean = roc_auc_score(y, sharp(X))
    baselines = {"uniform": 0.5, "heuristic": 0.75, "broken": math.nan}
    cfg = PerturbationGate(noise_std=0.5, swap_rate=0.0, max_lift_share=0.5)
    assert cfg.max_drop is None, "the default bound is lift-relative"
    gate = perturbation_gate(sharp, X, y, metric="roc_auc", cfg=cfg, baseline_scores=baselines, **PERTURB)
    lift = clean - 0.75
    assert gate.threshold == pytest.approx(0.5 * lift, abs=1e-12), gate
    assert gate.passed == (gate.value <= 0.5 * lift), gate.reason
    assert f"max {0.5 * lift:.4f} = 0.5 x lift {lift:+.4f} over best baseline heuristic 0.7500" in gate.reason
    bound = gate.details["bound"]
    assert bound["rule"] == "max_lift_share" and bound["best_baseline"] == "heuristic", bound
    assert bound["lift"] == pytest.approx(lift, abs=1e-6) and bound["bound"] == pytest.approx(0.5 * lift, abs=1e-6)
    # a smaller share is a tighter bound on the very same drop: this noise (drop ~0.05) fails a 10 % share
    tight = perturbation_gate(
        sharp, X, y, metric="roc_auc", cfg=cfg.model_copy(update={"max_lift_share": 0.1}), baseline_scores=baselines,
        **PERTURB,
    )  # fmt: skip
    assert tight.value == gate.value and tight.threshold == pytest.approx(0.1 * lift, abs=1e-12)
    assert not tight.passed and tight.value > tight.threshold, tight.reason
    fixed = perturbation_gate(
        sharp, X, y, metric="roc_auc", cfg=cfg.model_copy(update={"max_drop": 0.07}), baseline_scores=baselines,
        **PERTURB,
    )  # fmt: skip
    assert fixed.threshold == 0.07 and "max 0.07" in fixed.reason and fixed.details["bound"]["rule"] == "max_drop"


def test_perturbation_bound_in_the_lower_is_better_direction() -> None:
    X, _ = noisy_rows(1500, seed=5)
    y = 3.0 * X["x1"].to_numpy() + np.random.default_rng(6).normal(scale=0.5, size=len(X))
    predict = lambda frame: 3.0 * frame["x1"].to_numpy(dtype=float)  # noqa: E731
    clean = float(np.sqrt(np.mean((y - predict(X)) ** 2)))
    mean_baseline = float(np.sqrt(np.mean((y - y.mean()) ** 2)))
    cfg = PerturbationGate(noise_std=0.2, swap_rate=0.0, max_lift_share=0.5)
    gate = perturbation_gate(
        predict, X, y, metric="rmse", cfg=cfg, baseline_scores={"mean": mean_baseline, "median": 1e9}, **PERTURB
    )
    lift = mean_baseline - clean  # rmse: lower is better, the best baseline is the lowest
    assert lift > 0 and gate.threshold == pytest.approx(0.5 * lift, rel=1e-9), gate
    assert gate.details["bound"]["best_baseline"] == "mean" and gate.value > 0, gate.details
    assert gate.passed == (gate.value <= gate.threshold), gate.reason


def test_no_lift_over_the_baselines_allows_no_drop() -> None:
    X, y = noisy_rows(1000, seed=7)
    clean = roc_auc_score(y, sharp(X))
    cfg = PerturbationGate(noise_std=0.5, swap_rate=0.0)
    gate = perturbation_gate(sharp, X, y, metric="roc_auc", cfg=cfg, baseline_scores={"oracle": 0.999}, **PERTURB)
    assert gate.threshold == 0.0 and not gate.passed, "lift <= 0: bound 0 (the baseline gate fails as well)"
    assert "0 (no lift over best baseline oracle 0.9990" in gate.reason, gate.reason
    assert perturbation_bound(cfg, "roc_auc", clean, None)[0] == 0.0, "no baselines: no lift to share"
    assert perturbation_bound(cfg, "roc_auc", math.nan, {"u": 0.5})[0] == 0.0
    still = perturbation_gate(
        sharp, X, y, metric="roc_auc", cfg=PerturbationGate(noise_std=0.0, swap_rate=0.0), baseline_scores={}, **PERTURB
    )
    assert still.passed and still.value == 0.0 and still.threshold == 0.0, "nothing perturbed: a drop of 0 passes"
