"""What DVC shows (retrain/evaluation/reports.py): the metrics file and the plot rows, from a gate record alone."""

from __future__ import annotations

import numpy as np

from retrain.evaluation.modelcard import curves
from retrain.evaluation.reports import evaluate_metrics, plot_rows, promotion_metrics

RNG = np.random.default_rng(0)


def record(task: str, y: np.ndarray, scores: np.ndarray) -> dict:
    """A gate record as evaluate writes it (only the keys the reports read)."""
    return {
        "metric": "roc_auc" if task != "regression" else "rmse",
        "direction": "higher_is_better" if task != "regression" else "lower_is_better",
        "candidate": {"family": "lightgbm", "valid_score": 0.91},
        "scores": {"candidate": 0.9, "baselines": {"prior": 0.5, "stratified": 0.52}, "champion": None},
        "gates": [
            {"name": "metric_bounds", "value": 0.9, "threshold": 0.85, "status": "pass"},
            {"name": "slices", "value": 0.2, "threshold": 0.1, "status": "fail"},
            {"name": "serving", "value": None, "threshold": None, "status": "skipped"},
            {"name": "latency", "value": float("nan"), "threshold": 20.0, "status": "pass"},
        ],
        "decision": "reject",
        "failed_gates": ["slices"],
        "slices": {
            "columns": {"sex": [{"value": "F", "n": 120, "metric": 0.8}, {"value": "M", "n": 5, "metric": None}]}
        },
        "curves": curves(y, scores, task, None if task == "regression" else ["0", "1"]),
    }


def test_metrics_are_flat_short_and_carry_every_gate_and_the_decision() -> None:
    y = RNG.integers(0, 2, 300)
    metrics = evaluate_metrics(record("binary", y, RNG.random(300)))
    assert {k: metrics[k] for k in ("valid", "test", "test_champion", "test_baseline", "decision", "failed")} == {
        "valid": 0.91, "test": 0.9, "test_champion": None, "test_baseline": 0.52, "decision": "reject", "failed": 1,
    }  # fmt: skip
    assert metrics["gates"] == {
        "metric_bounds": {"value": 0.9, "limit": 0.85, "pass": 1},
        "slices": {"value": 0.2, "limit": 0.1, "pass": 0},
        "serving": {"value": None, "limit": None, "pass": "skip"},
        "latency": {"value": None, "limit": 20.0, "pass": 1},
    }, "NaN becomes None (JSON), a skipped gate says so"


def test_lower_is_better_takes_the_lowest_baseline() -> None:
    y = RNG.normal(size=200)
    assert evaluate_metrics(record("regression", y, y + RNG.normal(size=200)))["test_baseline"] == 0.5


def test_binary_plots_have_rows_and_regression_ones_are_empty_lists() -> None:
    y = RNG.integers(0, 2, 300)
    rows = plot_rows(
        record("binary", y, RNG.random(300)), {"sizes": [100, 300], "train": [0.9, 0.8], "valid": [0.7, 0.75]}
    )
    assert rows["roc"] and set(rows["roc"][0]) == {"fpr", "tpr"}
    assert rows["pr"] and set(rows["pr"][0]) == {"recall", "precision"}
    assert rows["calibration"] and set(rows["calibration"][0]) == {"predicted", "observed"}
    assert rows["learning_curve"] == [
        {"rows": 100, "train": 0.9, "valid": 0.7},
        {"rows": 300, "train": 0.8, "valid": 0.75},
    ]
    assert rows["slices"] == [{"slice": "sex=F", "score": 0.8, "n": 120}], "a slice without a metric is left out"
    assert rows["predicted_vs_actual"] == [] and rows["residuals"] == [], "regression plots: empty, never missing"


def test_regression_has_no_roc_but_residuals_and_predicted_vs_actual() -> None:
    y = RNG.normal(size=200)
    rows = plot_rows(record("regression", y, y + RNG.normal(scale=0.1, size=200)), None)
    assert rows["roc"] == [] and rows["pr"] == [] and rows["learning_curve"] == []
    assert rows["calibration"] and rows["predicted_vs_actual"] and rows["residuals"]
    assert sum(r["count"] for r in rows["residuals"]) == 200


def test_promotion_metrics_name_the_action_and_the_experiment() -> None:
    promotion = {"action": "would_reject", "decision": "reject", "version": None, "champion_version": "3"}
    assert promotion_metrics(promotion, "cured-yapp") == {
        "action": "would_reject", "version": None, "champion": "3", "challenger": None, "experiment": "cured-yapp",
        "recompared_vs": None, "recompared_decision": None,
    }  # fmt: skip
    moved = {"action": "rejected_on_recompare", "recompared": {"champion": {"version": "4"}, "decision": "reject"}}
    metrics = promotion_metrics(moved, None)
    assert (metrics["recompared_vs"], metrics["recompared_decision"]) == ("4", "reject"), metrics
