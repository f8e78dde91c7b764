"""Behavioural gates on a scoring function: perturbation robustness, invariance, directional expectations.

Each gate rescores edited copies of the test rows through `score_fn` (raw feature rows -> scores in the
shapes of retrain/metrics.py), one call per edit (feature, attribute value), never per row, and returns
one GateResult whose `details` hold the per-feature / per-attribute numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import DirectionalGate, InvarianceGate, PerturbationGate
from retrain.errors import ConfigError
from retrain.evaluation.gates import GateResult, skipped
from retrain.metrics import get_metric, score

ScoreFn = Callable[[pd.DataFrame], np.ndarray]
"""Raw feature rows -> scores (binary P(positive), multiclass (n, k), regression predictions)."""


def _json(value: float) -> float | None:
    """Rounded float, None for NaN/inf, so gate records stay valid JSON."""
    return round(float(value), 6) if math.isfinite(value) else None


def _is_integral(column: pd.Series) -> bool:
    """Integer dtype, or a float column whose present values are all whole numbers (ints with missing)."""
    if pd.api.types.is_integer_dtype(column.dtype):
        return True
    if not pd.api.types.is_float_dtype(column.dtype):
        return False
    values = column.dropna().to_numpy(dtype=float)
    return len(values) > 0 and bool(np.all(values == np.round(values)))


def _column_std(column: pd.Series) -> float:
    """Sample std of the present values as float (0 when under two values)."""
    values = pd.to_numeric(column, errors="coerce").dropna().to_numpy(dtype=float)
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _rescored(score_fn: ScoreFn, X: pd.DataFrame, column: str, values: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Scores of the `rows` (boolean mask) of X with one column replaced: one call, only the edited rows.

    Scoring is row-wise (every Predictor is), so unedited rows need no rescoring.
    """
    index = np.flatnonzero(rows)
    part = X.iloc[index].copy()
    part[column] = pd.Series(values.iloc[index].to_numpy(), index=part.index).astype(values.dtype)
    return np.asarray(score_fn(part), dtype=float)


def _noised_numeric(column: pd.Series, sigma: float, rng: np.random.Generator) -> pd.Series:
    """column + N(0, sigma^2) clipped to the observed range (no negative ages or gains); missing stays
    missing; integral columns are rounded and keep their dtype."""
    noise = rng.normal(0.0, sigma, size=len(column)) if sigma > 0 else np.zeros(len(column))
    original = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    values = original + noise
    if not np.isnan(original).all():
        values = np.clip(values, np.nanmin(original), np.nanmax(original))
    if _is_integral(column):
        values = np.round(values)
        if pd.api.types.is_integer_dtype(column.dtype) and not np.isnan(values).any():
            return pd.Series(values.astype(column.dtype), index=column.index, name=column.name)
    return pd.Series(values, index=column.index, name=column.name)


def _swapped_categorical(column: pd.Series, rate: float, rng: np.random.Generator) -> pd.Series:
    """Each present value replaced with probability `rate` by another observed value (uniformly)."""
    present = column.notna().to_numpy()
    labels = np.array([str(v) for v in column.to_numpy(dtype=object)], dtype=object)
    labels[~present] = None
    uniques = sorted(set(labels[present].tolist()))
    draws = rng.random(len(column))
    picks = rng.integers(0, max(len(uniques) - 1, 1), size=len(column))
    if len(uniques) < 2 or rate <= 0:
        return column
    swap = present & (draws < rate)
    codes = pd.Categorical(labels, categories=uniques).codes
    replacement = picks + (picks >= codes)  # skip the row's own value: always a different category
    values = column.to_numpy(dtype=object, copy=True)
    values[swap] = np.asarray(uniques, dtype=object)[replacement[swap]]
    return pd.Series(values, index=column.index, name=column.name).astype(column.dtype)


def perturbation_bound(
    cfg: PerturbationGate, metric: str, clean: float, baseline_scores: Mapping[str, float] | None
) -> tuple[float, str, dict[str, Any]]:
    """The largest drop allowed: `max_drop`, or `max_lift_share` x the lift over the best baseline.

    lift = (clean score - best baseline score) in the metric's better direction, on the same rows. A lift
    <= 0 (the baseline gate fails too), no finite baseline score or no baselines given: the bound is 0.
    Returns (bound, how it was derived for the reason, details).
    """
    if cfg.max_drop is not None:
        return cfg.max_drop, f"{cfg.max_drop:g}", {"rule": "max_drop", "max_drop": cfg.max_drop}
    share = cfg.max_lift_share
    details: dict[str, Any] = {"rule": "max_lift_share", "max_lift_share": share}
    finite = {k: float(v) for k, v in (baseline_scores or {}).items() if v is not None and math.isfinite(v)}
    if not finite or not math.isfinite(clean):
        what = "no baseline scores" if not finite else f"the clean {metric} is not finite"
        return 0.0, f"0 ({what}: no lift to take a share of)", {**details, "lift": None, "bound": 0.0}
    sign = 1.0 if get_metric(metric).greater_is_better else -1.0
    best = max(finite, key=lambda k: sign * finite[k])
    lift = sign * (clean - finite[best])
    bound = share * lift if lift > 0 else 0.0
    details.update(best_baseline=best, baseline_score=_json(finite[best]), lift=_json(lift), bound=_json(bound))
    text = (
        f"{bound:.4f} = {share:g} x lift {lift:+.4f} over best baseline {best} {finite[best]:.4f}"
        if lift > 0
        else f"0 (no lift over best baseline {best} {finite[best]:.4f}: {lift:+.4f})"
    )
    return bound, text, details


def perturbation_gate(
    score_fn: ScoreFn,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    metric: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    cfg: PerturbationGate,
    seed: int,
    baseline_scores: Mapping[str, float] | None = None,
) -> GateResult:
    """The metric drop (in its better direction) from noised numerics + swapped categories is within the bound.

    The bound is `max_drop`, or (max_drop None) `max_lift_share` x the candidate's lift over the best of
    `baseline_scores` (the baselines' metric on the same rows; see `perturbation_bound`). Also rescored
    with each feature perturbed alone (the same draws), so the reason names the feature the model is most
    fragile to.
    """
    name = "perturbation"
    if not cfg.enabled:
        return skipped(name, "disabled in evaluate.gates.perturbation")
    spec = get_metric(metric)
    sign = 1.0 if spec.greater_is_better else -1.0
    rng = np.random.default_rng(seed)
    columns = [c for c in [*numeric, *categorical] if c in X.columns]
    missing = [c for c in [*numeric, *categorical] if c not in X.columns]
    if missing:
        raise ConfigError(f"perturbation: features {missing} are not columns of the scored rows")
    edited: dict[str, pd.Series] = {}
    for column in numeric:
        edited[column] = _noised_numeric(X[column], cfg.noise_std * _column_std(X[column]), rng)
    for column in categorical:
        edited[column] = _swapped_categorical(X[column], cfg.swap_rate, rng)
    base = np.asarray(score_fn(X), dtype=float)
    clean = score(metric, y, base)
    noised_frame = X.copy(deep=False)
    for column, values in edited.items():
        noised_frame[column] = values
    noised = score(metric, y, score_fn(noised_frame))
    drop = sign * (clean - noised)
    per_feature: dict[str, dict[str, Any]] = {}
    for column in columns:
        before, after = X[column].to_numpy(dtype=object), edited[column].to_numpy(dtype=object)
        rows = X[column].notna().to_numpy() & (before != after)
        alone = base.copy()
        if rows.any():
            alone[rows] = _rescored(score_fn, X, column, edited[column], rows)
        per_feature[column] = {"rows_changed": int(rows.sum()), "drop": _json(sign * (clean - score(metric, y, alone)))}
    details: dict[str, Any] = {
        "metric": metric,
        "clean": _json(clean),
        "perturbed": _json(noised),
        "drop": _json(drop),
        "noise_std": cfg.noise_std,
        "swap_rate": cfg.swap_rate,
        "seed": seed,
        "features": per_feature,
    }
    bound, bound_text, details["bound"] = perturbation_bound(cfg, metric, clean, baseline_scores)
    if not math.isfinite(drop):
        reason = f"{metric} is not finite on the clean ({clean}) or perturbed ({noised}) rows"
        return GateResult(name, None, bound, False, reason, metric, "lower_is_better", details)
    finite = {c: v["drop"] for c, v in per_feature.items() if v["drop"] is not None}
    worst = max(finite, key=lambda c: finite[c]) if finite else None
    passed = drop <= bound
    worst_text = f"; most fragile feature {worst} (drop {finite[worst]:+.4f} alone)" if worst else ""
    reason = (
        f"{metric} {clean:.4f} -> {noised:.4f} under noise {cfg.noise_std} std / swap rate {cfg.swap_rate}: "
        f"drop {drop:+.4f} {'<=' if passed else '>'} max {bound_text}{worst_text}"
    )
    return GateResult(name, drop, bound, passed, reason, f"{metric}_drop", "lower_is_better", details)


def _classes(scores: np.ndarray) -> np.ndarray:
    """Predicted class: binary p >= 0.5, multiclass argmax."""
    return (scores >= 0.5).astype(np.int64) if scores.ndim == 1 else np.argmax(scores, axis=1)


def _abs_delta(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per-row |delta|: binary/regression on the score, multiclass the largest over classes."""
    delta = np.abs(after - before)
    return delta if delta.ndim == 1 else delta.max(axis=1)


def _share(value: float, bound: float) -> float:
    """How much of its bound a number uses (inf when the bound is 0 and the number is not)."""
    return value / bound if bound > 0 else (math.inf if value > 0 else 0.0)


def invariance_gate(
    score_fn: ScoreFn,
    X: pd.DataFrame,
    *,
    attributes: Sequence[str],
    task: str,
    cfg: InvarianceGate,
    y_std: float | None = None,
) -> GateResult:
    """Swapping each attribute to each other observed value changes few classes and moves scores little.

    Classification: flip rate (predicted class changes) and mean |delta p| (binary P(positive);
    multiclass the largest class move per row). Regression: mean |delta prediction| / y_std (no flips).
    Only rows whose value differs from the swapped-in value count; rows with it missing stay as they are.
    """
    name = "invariance"
    if not cfg.enabled:
        return skipped(name, "disabled in evaluate.gates.invariance")
    if not attributes:
        return skipped(
            name, "no protected attributes configured (evaluate.gates.invariance.attributes, dataset.protected)"
        )
    classification = task in ("binary", "multiclass")
    base = np.asarray(score_fn(X), dtype=float)
    details: dict[str, Any] = {"attributes": {}}
    scale = 1.0
    if not classification:
        scale = float(y_std) if y_std else float(np.std(base))
        details["y_std"] = scale
        details["y_std_source"] = "target" if y_std else "predictions (no y_std given)"
        scale = scale if scale > 0 else 1.0
    base_class = _classes(base) if classification else None
    # each entry: (value, attribute, swapped-in value, metric, bound)
    findings: list[tuple[float, str, str, str, float]] = []
    worst_flip = worst_delta = 0.0
    for attribute in attributes:
        if attribute not in X.columns:
            details["attributes"][attribute] = {"note": "not a model input column: cannot influence predictions"}
            continue
        column = X[attribute]
        present = column.notna().to_numpy()
        text = np.array([str(v) for v in column.to_numpy(dtype=object)], dtype=object)
        observed = column[present].drop_duplicates()
        values = sorted(observed.tolist(), key=str)
        table: dict[str, dict[str, Any]] = {}
        for value in values:
            counted = present & (text != str(value))
            n = int(counted.sum())
            if n == 0:
                continue
            swapped = column.where(~present, value).astype(column.dtype)
            after = _rescored(score_fn, X, attribute, swapped, counted)
            delta = float(np.mean(_abs_delta(base[counted], after))) / scale
            flip = float(np.mean(_classes(after) != base_class[counted])) if classification else 0.0
            table[str(value)] = {"rows": n, "flip_rate": _json(flip), "mean_abs_delta": _json(delta)}
            worst_flip, worst_delta = max(worst_flip, flip), max(worst_delta, delta)
            if classification:
                findings.append((flip, attribute, str(value), "flip_rate", cfg.max_flip_rate))
            findings.append((delta, attribute, str(value), "mean_abs_delta", cfg.max_mean_abs_delta))
        details["attributes"][attribute] = {"values": table}
    details.update(
        worst_flip_rate=_json(worst_flip),
        worst_mean_abs_delta=_json(worst_delta),
        max_flip_rate=cfg.max_flip_rate,
        max_mean_abs_delta=cfg.max_mean_abs_delta,
    )
    if not findings:
        return skipped(name, f"attributes {list(attributes)} are not model inputs or have a single value")
    if any(not math.isfinite(f[0]) for f in findings):
        reason = "invariance: scores are not finite on the original or swapped rows"
        return GateResult(name, None, cfg.max_flip_rate, False, reason, "flip_rate", "lower_is_better", details)
    failed = [f for f in findings if f[0] > f[4]]
    value, attribute, swapped_in, metric, bound = max(findings, key=lambda f: (f[0] > f[4], _share(f[0], f[4])))
    what = "share of predicted classes changed" if metric == "flip_rate" else "mean |delta score|"
    if not classification:
        what = "mean |delta prediction| / target std"
    others = f"; {len(failed) - 1} more (attribute, value) over bound" if len(failed) > 1 else ""
    reason = (
        f"{attribute} set to {swapped_in!r}: {what} {value:.4f} {'>' if failed else '<='} max {bound}{others} "
        f"(worst flip rate {worst_flip:.4f}, worst mean |delta| {worst_delta:.4f})"
    )
    details["worst"] = {"attribute": attribute, "value": swapped_in, "metric": metric}
    return GateResult(name, _json(value), bound, not failed, reason, metric, "lower_is_better", details)


def directional_gate(
    score_fn: ScoreFn,
    X: pd.DataFrame,
    *,
    task: str,
    cfg: DirectionalGate,
    integer_columns: Sequence[str] = (),
) -> GateResult:
    """Raising an increasing feature must not lower the score (decreasing: not raise it) beyond tolerance.

    Step = step_std x the feature's std (integer columns: rounded, at least 1). The score is
    P(positive) (binary) or the prediction (regression); multiclass has no single score and is skipped.
    Rows with the feature missing are not counted.
    """
    name = "directional"
    if not cfg.enabled:
        return skipped(name, "disabled in evaluate.gates.directional")
    if task == "multiclass":
        return skipped(name, "directional expectations need one score per row; multiclass has k")
    expectations = [(f, 1.0) for f in cfg.increasing] + [(f, -1.0) for f in cfg.decreasing]
    if not expectations:
        return skipped(name, "no features in evaluate.gates.directional.increasing / decreasing")
    bad = [f for f, _ in expectations if f not in X.columns]
    if bad:
        raise ConfigError(f"evaluate.gates.directional: features {bad} are not model input columns")
    not_numeric = [f for f, _ in expectations if not pd.api.types.is_numeric_dtype(X[f].dtype)]
    if not_numeric:
        raise ConfigError(f"evaluate.gates.directional: features {not_numeric} are not numeric")
    base = np.asarray(score_fn(X), dtype=float).reshape(-1)
    if not np.all(np.isfinite(base)):
        reason = f"directional: {int((~np.isfinite(base)).sum())} of {len(base)} scores are not finite"
        return GateResult(name, None, cfg.max_violation_rate, False, reason, "violation_rate", "lower_is_better")
    table: dict[str, dict[str, Any]] = {}
    for feature, direction in expectations:
        column = X[feature]
        present = column.notna().to_numpy()
        std = _column_std(column)
        step = cfg.step_std * std
        integral = feature in integer_columns or _is_integral(column)
        if integral:
            step = max(1.0, float(round(step)))
        entry: dict[str, Any] = {
            "expected": "increasing" if direction > 0 else "decreasing",
            "step": step,
            "rows": int(present.sum()),
        }
        table[feature] = entry
        if step <= 0 or not present.any():
            entry.update(note="constant or empty column: not tested", violation_rate=None)
            continue
        if integral and pd.api.types.is_integer_dtype(column.dtype):
            raised = column + int(step)
        else:
            raised = pd.to_numeric(column, errors="coerce").astype(float) + step
        moved = _rescored(score_fn, X, feature, raised, present).reshape(-1) - base[present]
        wrong = ~np.isfinite(moved) | (-direction * moved > cfg.tolerance)  # a NaN score is a violation
        entry.update(
            violation_rate=_json(float(np.mean(wrong))),
            violations=int(wrong.sum()),
            mean_delta=_json(float(np.mean(moved))),
            worst_delta=_json(-direction * float(np.nanmax(-direction * moved))) if np.isfinite(moved).any() else None,
        )
    tested = {f: e for f, e in table.items() if e["violation_rate"] is not None}
    details: dict[str, Any] = {
        "features": table,
        "step_std": cfg.step_std,
        "tolerance": cfg.tolerance,
        "max_violation_rate": cfg.max_violation_rate,
    }
    if not tested:
        return skipped(name, f"every declared feature is constant or empty: {sorted(table)}")
    worst = max(tested, key=lambda f: tested[f]["violation_rate"])
    rate = float(tested[worst]["violation_rate"])
    passed = rate <= cfg.max_violation_rate
    e = tested[worst]
    word = "lowered" if e["expected"] == "increasing" else "raised"
    move = "n/a (scores not finite)" if e["worst_delta"] is None else f"{e['worst_delta']:+.4f}"
    reason = (
        f"{worst} +{e['step']:.4g} ({e['expected']}) {word} the score on {rate:.4f} of {e['rows']} rows "
        f"({'<=' if passed else '>'} max {cfg.max_violation_rate}); worst move {move}"
    )
    return GateResult(name, rate, cfg.max_violation_rate, passed, reason, "violation_rate", "lower_is_better", details)
