"""Given scores, each gate passes or fails with its value, threshold and reason."""

from __future__ import annotations

import math

from retrain.gates import beats_baselines, decide, metric_is_finite, no_regression


def test_beats_baselines_margin() -> None:
    base = {"most_frequent": 0.5, "uniform": 0.52}
    ok = beats_baselines("roc_auc", 0.8, base, margin=0.05)
    assert ok.passed and "uniform" in ok.reason
    bad = beats_baselines("roc_auc", 0.55, base, margin=0.05)
    assert not bad.passed and bad.threshold == 0.05


def test_no_regression_tolerance_and_first_run() -> None:
    assert no_regression("roc_auc", 0.899, 0.9, tolerance=0.002).passed
    worse = no_regression("roc_auc", 0.89, 0.9, tolerance=0.002)
    assert not worse.passed and "beyond" in worse.reason
    first = no_regression("roc_auc", 0.7, None, tolerance=0.002)
    assert first.passed and "first-run policy" in first.reason


def test_nan_metric_fails_every_comparison() -> None:
    assert not metric_is_finite("roc_auc", math.nan).passed
    assert not beats_baselines("roc_auc", math.nan, {"u": 0.5}, 0.0).passed
    assert not no_regression("roc_auc", math.nan, 0.8, 0.01).passed


def test_decide_lists_failed_gates() -> None:
    gates = [metric_is_finite("roc_auc", 0.8), beats_baselines("roc_auc", 0.51, {"u": 0.5}, 0.05)]
    assert decide(gates) == ("reject", ["beats_baselines"])
    assert decide(gates[:1]) == ("promote", [])
