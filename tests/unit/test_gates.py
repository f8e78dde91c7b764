"""Given scores, each gate passes or fails in the metric's direction with its value, threshold and reason."""

from __future__ import annotations

import math

import pytest

from retrain.gates import beats_baselines, decide, metric_is_finite, no_regression


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


def test_no_regression_tolerance_and_first_run() -> None:
    assert no_regression("roc_auc", 0.899, 0.9, tolerance=0.002).passed
    worse = no_regression("roc_auc", 0.89, 0.9, tolerance=0.002)
    assert not worse.passed and "beyond" in worse.reason, worse.reason
    first = no_regression("roc_auc", 0.7, None, tolerance=0.002)
    assert first.passed and "first-run policy" in first.reason, first.reason


def test_no_regression_lower_is_better() -> None:
    assert no_regression("mae", 10.5, 10.0, tolerance=1.0).passed, "0.5 worse is within tolerance 1"
    worse = no_regression("mae", 11.5, 10.0, tolerance=1.0)
    assert not worse.passed and worse.threshold == 11.0 and worse.value == 11.5, worse
    assert no_regression("rmse", 5.0, 10.0, tolerance=0.0).passed, "a lower rmse than the champion passes"
    assert not no_regression("r2", 0.5, 0.9, tolerance=0.1).passed, "a lower r2 beyond tolerance fails"


def test_nan_metric_fails_every_comparison() -> None:
    for metric in ("roc_auc", "rmse"):
        assert not metric_is_finite(metric, math.nan).passed, metric
        assert not beats_baselines(metric, math.nan, {"u": 0.5}, 0.0).passed, metric
        assert not no_regression(metric, math.nan, 0.8, 0.01).passed, metric
    assert not beats_baselines("r2", 0.9, {"mean": math.nan}, 0.0).passed, "no finite baseline: cannot pass"


def test_decide_lists_failed_gates() -> None:
    gates = [metric_is_finite("roc_auc", 0.8), beats_baselines("roc_auc", 0.51, {"u": 0.5}, 0.05)]
    assert decide(gates) == ("reject", ["beats_baselines"])
    assert decide(gates[:1]) == ("promote", [])
