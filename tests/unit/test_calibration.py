"""Calibration error, calibrators (fit, JSON, served with the model) and the confidence threshold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from retrain.config import CalibrationGate, ConfidenceGate
from retrain.errors import ConfigError
from retrain.evaluation.calibration import (
    brier_score,
    calibration_gate,
    choose_threshold,
    confidence_gate,
    expected_calibration_error,
    top_confidence,
)
from retrain.models.calibrator import Calibrator, fit_calibrator
from retrain.models.estimators import (
    CALIBRATION,
    CONFIDENCE,
    CalibratedPredictor,
    build_model,
    load_confidence,
    load_predictor,
    pipeline_scores,
    save_calibration,
    save_confidence,
    save_model,
)

NUMERIC, CATEGORICAL = ["x1", "x2"], ["c"]
LABELS = ["low", "mid", "high"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One OpenMP/BLAS thread: the cores are shared."""
    with threadpool_limits(limits=1):
        yield


def rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Noisy binary labels from a logistic truth: a well-specified model is calibrated."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "c": pd.Series(rng.choice(["u", "v"], size=n), dtype="str"),
        }
    )
    p = 1.0 / (1.0 + np.exp(-(1.5 * X["x1"] - X["x2"] + 0.5 * (X["c"] == "u"))))
    return X, (rng.random(n) < p).astype(int).to_numpy()


def sharpen(p: np.ndarray, power: float = 0.1) -> np.ndarray:
    """An overconfident model: probabilities pushed towards 0 and 1 (logit x 1/power)."""
    a, b = p**power, (1.0 - p) ** power
    return a / (a + b)


@pytest.fixture(scope="module")
def logreg_scores() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A real logistic regression's P(positive) and labels on valid and test splits."""
    X, y = rows(1500, seed=0)
    model = build_model("logreg", {"C": 1.0}, NUMERIC, CATEGORICAL).fit(X, y)
    out = {}
    for name, seed in (("valid", 1), ("test", 2)):
        Xs, ys = rows(2000, seed)
        out[name] = (pipeline_scores(model, Xs, "binary", 2), ys)
    return out


def test_calibrated_model_passes_overconfident_fails_then_passes_after_calibration(logreg_scores: dict) -> None:
    (p_valid, y_valid), (p_test, y_test) = logreg_scores["valid"], logreg_scores["test"]
    cfg = CalibrationGate(max_ece=0.05, max_brier=0.25)
    honest = calibration_gate(y_test, p_test, task="binary", cfg=cfg)
    assert honest.passed, honest.reason
    over = calibration_gate(y_test, sharpen(p_test), task="binary", cfg=cfg)
    assert not over.passed and over.value > 0.1, over.reason
    assert "worst bin" in over.reason and over.details["reliability"], over.details
    json.dumps(over.to_dict(), allow_nan=False)  # the gate record must stay strict JSON
    for method in ("isotonic", "sigmoid"):
        calibrator = fit_calibrator(method, sharpen(p_valid), y_valid, "binary")
        fixed = calibration_gate(
            y_test, calibrator.apply(sharpen(p_test)), task="binary", cfg=CalibrationGate(method=method, max_ece=0.05)
        )
        assert fixed.passed, f"{method} calibration on valid repairs the overconfident model: {fixed.reason}"
        assert fixed.details["method"] == method and method in fixed.reason


def test_ece_and_brier_match_a_direct_computation() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.95, 0.55, 0.45, 0.62])
    # bins of width 0.5: [0, .5) holds 0.05, 0.45 (mean .25, positives 0); [.5, 1] the rest (mean .7067, rate 1)
    expected = (2 * abs(0.25 - 0.0) + 3 * abs((0.95 + 0.55 + 0.62) / 3 - 1.0)) / 5
    assert expected_calibration_error(y, p, "binary", bins=2) == pytest.approx(expected)
    assert brier_score(y, p, "binary") == pytest.approx(np.mean((p - y) ** 2))
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1])
    assert brier_score(labels, probs, "multiclass") == pytest.approx(
        ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.7**2 + 0.6**2)) / 2
    )
    # multiclass ECE on top-class confidence: 0.7 correct, 0.6 wrong, one bin [0.5, 1]
    assert expected_calibration_error(labels, probs, "multiclass", bins=2) == pytest.approx(abs(0.65 - 0.5))
    assert np.isnan(expected_calibration_error(y, np.array([0.1, np.nan, 0.2, 0.3, 0.4]), "binary")), "NaN, not a pass"


def test_calibration_applicability_and_nan_scores() -> None:
    gate = calibration_gate(np.zeros(3), np.zeros(3), task="regression", cfg=CalibrationGate())
    assert gate.skipped and "classification" in gate.reason
    bad = calibration_gate(np.array([0, 1]), np.array([np.nan, 0.5]), task="binary", cfg=CalibrationGate())
    assert not bad.passed and not bad.skipped, bad.reason
    with pytest.raises(ConfigError, match=r"evaluate\.gates\.calibration\.method"):
        fit_calibrator("isotonic", np.zeros(5), np.zeros(5), "regression")


def test_multiclass_calibrator_renormalises_and_round_trips_json() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(600, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row**0.3 / (row**0.3).sum()) for row in probs])  # truth flatter than scores
    for method in ("isotonic", "sigmoid"):
        calibrator = fit_calibrator(method, probs, y, "multiclass")
        out = calibrator.apply(probs)
        assert out.shape == probs.shape and np.allclose(out.sum(axis=1), 1.0), "rows are probabilities"
        before = expected_calibration_error(y, probs, "multiclass")
        assert expected_calibration_error(y, out, "multiclass") < before, f"{method} lowers in-sample ECE"
        text = json.dumps(calibrator.to_dict(), sort_keys=True)
        again = Calibrator.from_dict(json.loads(text))
        assert np.array_equal(again.apply(probs), out), "JSON round trip gives identical outputs"
        assert json.dumps(again.to_dict(), sort_keys=True) == text, "and the same JSON"


@pytest.mark.parametrize("family", ["lightgbm", "logreg"])
def test_saved_calibration_is_applied_by_load_predictor(tmp_path: Path, family: str) -> None:
    X, y = rows(500, seed=3)
    params = {"n_estimators": 30, "verbose": -1, "deterministic": True, "n_jobs": 1} if family == "lightgbm" else {}
    model = build_model(family, params, NUMERIC, CATEGORICAL).fit(X, y)
    save_model(model, family, [*NUMERIC, *CATEGORICAL], tmp_path / "m", labels=["no", "yes"])
    raw = load_predictor(tmp_path / "m").predict_scores(X)
    calibrator = fit_calibrator("isotonic", sharpen(raw), y, "binary")
    for i in range(2):
        save_calibration(tmp_path / f"c{i}", calibrator)
    a, b = ((tmp_path / f"c{i}" / CALIBRATION).read_bytes() for i in range(2))
    assert a == b, "identical calibrators give byte-identical files"
    (tmp_path / "m" / CALIBRATION).write_bytes(a)
    predictor = load_predictor(tmp_path / "m")
    assert isinstance(predictor, CalibratedPredictor) and predictor.features == [*NUMERIC, *CATEGORICAL]
    assert np.array_equal(predictor.predict_scores(X), calibrator.apply(raw)), "served scores are calibrated"
    assert load_confidence(tmp_path / "m") is None, "no threshold stored yet"
    save_confidence(tmp_path / "m", 0.8, ["no", "yes"])
    assert load_confidence(tmp_path / "m") == {"threshold": 0.8, "labels": ["no", "yes"]}
    assert (tmp_path / "m" / CONFIDENCE).read_text().endswith("\n")


def test_confidence_numbers_on_a_hand_made_example() -> None:
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.2, 0.6, 0.45, 0.55, 0.05])
    confidence, predicted = top_confidence(p, "binary")
    assert np.allclose(confidence, [0.9, 0.8, 0.6, 0.55, 0.55, 0.95]) and list(predicted) == [1, 0, 1, 0, 1, 0]
    # correct: rows 0, 1, 2, 5; kept at 0.6: rows 0, 1, 2, 5 -> precision 1, coverage 4/6
    cfg = ConfidenceGate(target_precision=1.0, min_coverage=0.5, min_precision=0.9)
    assert choose_threshold(y, p, task="binary", cfg=cfg) == pytest.approx(0.6), "lowest threshold reaching 1.0"
    coverage_cfg = ConfidenceGate(target_coverage=0.5)
    assert choose_threshold(y, p, task="binary", cfg=coverage_cfg) == pytest.approx(0.8), "keeps 3 of 6 rows"
    gate = confidence_gate(y, p, 0.6, task="binary", cfg=cfg)
    kept = confidence >= 0.6
    assert gate.details["coverage"] == pytest.approx(kept.mean()) and gate.value == pytest.approx(
        (predicted[kept] == y[kept]).mean()
    ), gate.details
    assert gate.passed, gate.reason
    json.dumps(gate.to_dict(), allow_nan=False)  # the gate record must stay strict JSON
    strict = confidence_gate(y, p, 0.5, task="binary", cfg=cfg)
    assert not strict.passed and strict.value == pytest.approx(4 / 6), f"all kept, 4 of 6 right: {strict.reason}"
    empty = confidence_gate(y, p, 0.99, task="binary", cfg=cfg)
    assert not empty.passed and empty.value is None and "no test row" in empty.reason, empty.reason
    json.dumps(empty.to_dict(), allow_nan=False)
    assert confidence_gate(y, p, 0.5, task="regression", cfg=cfg).skipped


def test_threshold_reaches_target_precision_on_valid_with_a_real_model(logreg_scores: dict) -> None:
    (p_valid, y_valid), (p_test, y_test) = logreg_scores["valid"], logreg_scores["test"]
    cfg = ConfidenceGate(target_precision=0.9, min_coverage=0.3, min_precision=0.85)
    threshold = choose_threshold(y_valid, p_valid, task="binary", cfg=cfg)
    confidence, predicted = top_confidence(p_valid, "binary")
    kept = confidence >= threshold
    assert (predicted[kept] == y_valid[kept]).mean() >= 0.9, "the target precision is reached on valid"
    lower = confidence > 0.5
    assert kept.sum() < lower.sum(), "and the threshold actually abstains on something"
    gate = confidence_gate(y_test, p_test, threshold, task="binary", cfg=cfg)
    assert gate.passed and gate.details["threshold"] == threshold, gate.reason
    unreachable = choose_threshold(y_valid, p_valid, task="binary", cfg=ConfidenceGate(target_precision=1.0))
    assert unreachable <= 1.0


def test_multiclass_confidence_and_regression_refused() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.35, 0.25]])
    confidence, predicted = top_confidence(probs, "multiclass")
    assert np.allclose(confidence, [0.7, 0.6, 0.4]) and list(predicted) == [0, 2, 0]
    cfg = ConfidenceGate(target_coverage=2 / 3)
    assert choose_threshold(np.array([0, 2, 1]), probs, task="multiclass", cfg=cfg) == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="classification"):
        choose_threshold(np.zeros(3), np.zeros(3), task="regression", cfg=cfg)


def _equal_width_ece(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    """The hand-written ECE this module used before sklearn's binning: bin = floor(p * bins), last bin closed."""
    index = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    total = 0.0
    for b in np.unique(index):
        rows = index == b
        total += rows.sum() * abs(p[rows].mean() - y[rows].mean())
    return total / len(p)


def test_reliability_bins_are_calibration_curves_and_ece_matches_the_hand_binning() -> None:
    from sklearn.calibration import calibration_curve

    from retrain.evaluation.calibration import reliability_bins

    rng = np.random.default_rng(7)
    p = rng.uniform(size=20_000)
    y = (rng.random(p.size) < p**1.3).astype(int)
    for bins in (5, 10, 15):
        counts, mean_pred, mean_obs = reliability_bins(y, p, bins)
        observed, expected = calibration_curve(y, p, n_bins=bins, strategy="uniform")
        used = counts > 0
        assert np.array_equal(mean_pred[used], expected) and np.array_equal(mean_obs[used], observed), (
            f"{bins} bins: the means are sklearn's calibration_curve, bit for bit"
        )
        assert counts.sum() == p.size and np.isnan(mean_pred[~used]).all(), "every row counted once; empty bins NaN"
        ece = expected_calibration_error(y, p, "binary", bins)
        assert ece == pytest.approx(_equal_width_ece(y.astype(float), p, bins), abs=1e-12), (
            f"{bins} bins: continuous scores never sit on an edge, so the old and new ECE agree to 1e-12"
        )


def test_bins_are_right_closed_like_calibration_curve() -> None:
    from retrain.evaluation.calibration import bin_label, reliability_bins

    counts, _, _ = reliability_bins(np.array([0, 1, 1, 0]), np.array([0.0, 0.5, 0.50001, 1.0]), 2)
    assert counts.tolist() == [2.0, 2.0], f"0.5 falls in [0, 0.5] (sklearn searchsorted), not (0.5, 1]: {counts}"
    assert [bin_label(i, 4) for i in range(4)] == ["[0.00, 0.25]", "(0.25, 0.50]", "(0.50, 0.75]", "(0.75, 1.00]"]
    gate = calibration_gate(
        np.array([0, 1, 1, 0]), np.array([0.1, 0.5, 0.9, 0.5]), task="binary", cfg=CalibrationGate()
    )
    labels = [row["bin"] for row in gate.details["reliability"]]
    assert labels == ["[0.00, 0.10]", "(0.40, 0.50]", "(0.80, 0.90]"], f"the record names the bins it used: {labels}"
    empty_counts, empty_pred, _ = reliability_bins(np.array([], dtype=int), np.array([]), 3)
    assert empty_counts.sum() == 0 and np.isnan(empty_pred).all(), "no rows, no crash"
