"""The gate policy of `evaluate.gates`: every gate in policy order, on one candidate's test scores.

Pure: what only the caller can measure (latency on its serving path, the fresh-process serving check) comes
in as callables, so the evaluate task and the benchmarks' plain-Python path run the very same policy.

`label_free_gates` is the part of the policy that reads no test labels (latency, serving, directional,
invariance): gate-aware selection (retrain/evaluation/selection.py) screens candidates with exactly these
callables, and `gate_policy` reuses the chosen candidate's screening results instead of running them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from retrain.catalog import SPLITS
from retrain.config import TASK_METRICS, DatasetConfig, Params
from retrain.errors import DataError
from retrain.evaluation.behaviour import directional_gate, invariance_gate, perturbation_gate
from retrain.evaluation.calibration import calibration_gate, confidence_gate
from retrain.evaluation.fairness import fairness_gate
from retrain.evaluation.gates import (
    GateResult,
    beats_baselines,
    metric_bounds,
    metric_is_finite,
    no_regression_bootstrap,
    skipped,
    slice_table,
    slices_gate,
)
from retrain.metrics import score

ScoreFn = Callable[[pd.DataFrame], np.ndarray]


def timed(seconds: dict[str, float], name: str, gate: Callable[[], GateResult]) -> GateResult:
    """Run one gate, keeping its wall time for the record (the gates' cost is part of the product)."""
    started = time.perf_counter()
    result = gate()
    seconds[name] = round(time.perf_counter() - started, 3)
    return result


def require_columns(X: pd.DataFrame, columns: list[str], key: str) -> None:
    """Gate columns must exist in the test split (an inferred schema is checked only here)."""
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise DataError(f"evaluate: {key} columns {missing} are not in {SPLITS['test']}")


def gate_policy(
    params: Params,
    dataset: DatasetConfig,
    score_fn: ScoreFn,
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    scores: np.ndarray,
    context: dict[str, Any],
    measure_latency: Callable[[], GateResult],
    check_serving: Callable[[], GateResult],
    screened: Mapping[str, GateResult] | None = None,
    screened_seconds: Mapping[str, float] | None = None,
    on_gate: Callable[[GateResult, float], None] | None = None,
) -> tuple[list[GateResult], dict[str, Any]]:
    """Every gate of evaluate.gates, in policy order; disabled ones are recorded as skipped.

    `context`: candidate_score, baseline_scores, champion_scores (None without a champion) and
    confidence_threshold. `screened`: label-free gates already run on this very model by the selection
    screening (`label_free_gates`, same callables and settings): reused as they are, with their seconds,
    never run twice. `on_gate(result, seconds)` hears of each gate as it is decided (progress on the terminal).
    Returns the gates and the record's extras (gate_seconds, metrics, slices).
    """
    cfg, metric = params.evaluate.gates, params.evaluate.metric
    task, seed = dataset.task, params.seed
    protected = dataset.protected
    columns = cfg.slices.columns or dataset.slices
    attributes = cfg.fairness.attributes or protected
    swapped = cfg.invariance.attributes or protected
    named = [*columns, *cfg.slices.bands, *attributes, *swapped, *cfg.directional.increasing]
    require_columns(X_test, [*named, *cfg.directional.decreasing], "evaluate.gates")
    seconds: dict[str, float] = {}
    extra: dict[str, Any] = {"gate_seconds": seconds}
    candidate_score = context["candidate_score"]
    champion_scores = context["champion_scores"]
    gates: list[GateResult] = [metric_is_finite(metric, candidate_score)]
    if on_gate is not None:
        on_gate(gates[0], 0.0)

    reused, reused_seconds = dict(screened or {}), dict(screened_seconds or {})
    label_free = label_free_gates(
        params, dataset, score_fn, X_test, target_std(task, y_test), measure_latency, check_serving
    )

    def add(name: str, enabled: bool, gate: Callable[[], GateResult]) -> None:
        if enabled and name in reused:
            gates.append(reused[name])
            seconds[name] = reused_seconds.get(name, 0.0)
        else:
            gates.append(timed(seconds, name, gate) if enabled else skipped(name, f"disabled (evaluate.gates.{name})"))
        if on_gate is not None:
            on_gate(gates[-1], seconds.get(name, 0.0))

    bounded = {*cfg.metric_bounds.min, *cfg.metric_bounds.max}
    all_metrics = {m: score(m, y_test, scores) for m in TASK_METRICS[task] if m in bounded}
    extra["metrics"] = all_metrics
    add("metric_bounds", cfg.metric_bounds.enabled, lambda: metric_bounds(cfg.metric_bounds, all_metrics))
    add(
        "beats_baselines",
        cfg.baseline.enabled,
        lambda: beats_baselines(metric, candidate_score, context["baseline_scores"], cfg.baseline.margin),
    )
    add(
        "no_regression_vs_champion",
        cfg.champion.enabled,
        lambda: no_regression_bootstrap(cfg.champion, metric, y_test, scores, champion_scores, seed),
    )

    table = slice_table(X_test, columns, cfg.slices.bands, metric, y_test, scores, cfg.slices.min_rows)
    champion_table = (
        slice_table(X_test, columns, cfg.slices.bands, metric, y_test, champion_scores, cfg.slices.min_rows)
        if champion_scores is not None
        else None
    )
    add("slices", cfg.slices.enabled, lambda: slices_gate(cfg.slices, metric, candidate_score, table, champion_table))
    extra["slices"] = {"min_rows": cfg.slices.min_rows, "columns": table}

    add(
        "perturbation",
        cfg.perturbation.enabled,
        lambda: perturbation_gate(
            score_fn, X_test, y_test, metric=metric, numeric=dataset.numeric, categorical=dataset.categorical,
            cfg=cfg.perturbation, seed=seed, baseline_scores=context["baseline_scores"],
        ),
    )  # fmt: skip
    add("invariance", *label_free["invariance"])
    add("directional", *label_free["directional"])
    add(
        "calibration", cfg.calibration.enabled, lambda: calibration_gate(y_test, scores, task=task, cfg=cfg.calibration)
    )
    threshold = context["confidence_threshold"]
    add(
        "confidence",
        cfg.confidence.enabled,
        lambda: (
            confidence_gate(y_test, scores, threshold, task=task, cfg=cfg.confidence)
            if threshold is not None
            else skipped("confidence", f"no confidence threshold for a {task} task")
        ),
    )
    add(
        "fairness",
        cfg.fairness.enabled,
        lambda: fairness_gate(y_test, scores, {a: X_test[a] for a in attributes}, task=task, cfg=cfg.fairness),
    )

    add("latency", *label_free["latency"])
    add("serving", *label_free["serving"])
    return gates, extra


def target_std(task: str, y_test: np.ndarray) -> float | None:
    """The scale of the regression invariance bound: the target's std on test (None for classification).

    A constant of the table, the same for every candidate: it scales the bound, it cannot rank candidates.
    """
    return float(np.std(y_test)) if task == "regression" else None


def label_free_gates(
    params: Params,
    dataset: DatasetConfig,
    score_fn: ScoreFn,
    X_test: pd.DataFrame,
    y_std: float | None,
    measure_latency: Callable[[], GateResult],
    check_serving: Callable[[], GateResult],
) -> dict[str, tuple[bool, Callable[[], GateResult]]]:
    """The gates that read no test labels, name -> (enabled, run): what selection may screen candidates with.

    `y_std` (regression only, `target_std`) is the one number from test labels here: a per-table constant
    scaling the invariance bound, identical for every candidate.
    """
    cfg, task = params.evaluate.gates, dataset.task
    swapped = cfg.invariance.attributes or dataset.protected
    require_columns(X_test, [*swapped, *cfg.directional.increasing, *cfg.directional.decreasing], "evaluate.gates")
    integers = [c for c, spec in dataset.schema.items() if spec.type == "int"]
    return {
        "latency": (cfg.latency.enabled, measure_latency),
        "serving": (cfg.serving.enabled, check_serving),
        "directional": (
            cfg.directional.enabled,
            lambda: directional_gate(score_fn, X_test, task=task, cfg=cfg.directional, integer_columns=integers),
        ),
        "invariance": (
            cfg.invariance.enabled,
            lambda: invariance_gate(score_fn, X_test, attributes=swapped, task=task, cfg=cfg.invariance, y_std=y_std),
        ),
    }
