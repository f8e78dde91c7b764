"""Offline evaluation gates: each returns value, threshold, pass/fail and a reason a person can act on.

Gates respect the metric's direction (retrain/metrics.py): for r2 or roc_auc higher is better, for rmse,
mae or log_loss lower is better. In a gate record `value` is the candidate's real metric value,
`threshold` the bound it had to reach, and `direction` says which side passes (`higher_is_better`:
value >= threshold; `lower_is_better`: value <= threshold).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import ChampionGate, MetricBoundsGate, SlicesGate
from retrain.metrics import get_metric, score

BOOTSTRAP_CHUNK = 100
"""Bootstrap resamples scored at once by the vectorised ROC AUC (memory: chunk x rows floats)."""


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate: `status` is pass, fail or skipped (disabled or not applicable: blocks nothing).

    `details` holds what a reader needs to see why (per-attribute numbers, intervals, slice tables).
    """

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str
    metric: str | None = None
    direction: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def status(self) -> str:
        """pass | fail | skipped."""
        return "skipped" if self.skipped else "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the gate record."""
        return {**asdict(self), "status": self.status}


def skipped(name: str, reason: str) -> GateResult:
    """A gate that did not run (disabled in params, or not applicable to the task); it blocks nothing."""
    return GateResult(name, None, None, True, reason, skipped=True)


def _fmt(value: float | None) -> str:
    """A metric value for a reason line."""
    return "none" if value is None else f"{value:.4f}"


def metric_is_finite(metric: str, value: float) -> GateResult:
    """A NaN or infinite metric is a failure, never a pass by comparison quirks."""
    ok = math.isfinite(value)
    reason = f"{metric} = {value:.4f}" if ok else f"{metric} is {value}: the candidate's scores are not usable"
    return GateResult("metric_is_finite", value if ok else None, None, ok, reason, metric, get_metric(metric).direction)


def beats_baselines(metric: str, candidate: float, baselines: dict[str, float], margin: float) -> GateResult:
    """The candidate must beat the best baseline by at least the margin, in the metric's direction."""
    spec = get_metric(metric)
    sign = 1.0 if spec.greater_is_better else -1.0
    finite = {k: v for k, v in baselines.items() if math.isfinite(v)}
    if not finite:
        reason = f"{metric}: no baseline has a finite score ({baselines}); nothing to compare with"
        return GateResult("beats_baselines", _finite(candidate), None, False, reason, metric, spec.direction)
    best_name = max(finite, key=lambda k: sign * finite[k])
    needed = finite[best_name] + sign * margin
    ok = math.isfinite(candidate) and sign * (candidate - needed) >= 0
    word = "+" if spec.greater_is_better else "-"
    reason = (
        f"{metric} {_fmt(candidate)} vs best baseline {best_name} {finite[best_name]:.4f} {word} margin {margin} "
        f"= {needed:.4f} ({spec.direction.replace('_', ' ')}): {'beats' if ok else 'does not beat'} it"
    )
    return GateResult("beats_baselines", _finite(candidate), needed, ok, reason, metric, spec.direction)


def _finite(value: float) -> float | None:
    """None for NaN/inf, so gate records stay valid JSON."""
    return value if math.isfinite(value) else None


def metric_bounds(cfg: MetricBoundsGate, values: Mapping[str, float]) -> GateResult:
    """Absolute bounds on test metrics; a NaN value or a bound on an unscored metric fails."""
    checks = [(m, ">=", b) for m, b in cfg.min.items()] + [(m, "<=", b) for m, b in cfg.max.items()]
    if not checks:
        return skipped("metric_bounds", "no bounds configured (evaluate.gates.metric_bounds.min / max)")
    failed, lines = [], []
    for metric, op, bound in checks:
        value = values.get(metric, math.nan)
        ok = math.isfinite(value) and (value >= bound if op == ">=" else value <= bound)
        lines.append(f"{metric} {_fmt(_finite(value))} {op} {bound}: {'ok' if ok else 'FAIL'}")
        if not ok:
            failed.append(metric)
    worst = failed[0] if failed else checks[0][0]
    bound = dict(cfg.min) | dict(cfg.max)
    details = {"values": {m: _finite(values.get(m, math.nan)) for m, _, _ in checks}, "min": cfg.min, "max": cfg.max}
    return GateResult(
        "metric_bounds", _finite(values.get(worst, math.nan)), bound[worst], not failed, "; ".join(lines), worst,
        get_metric(worst).direction, details,
    )  # fmt: skip


def _weighted_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of `weights` (bootstrap counts), ties counted half, in one sort."""
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], y[order] == 1
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_w = np.add.reduceat(w * pos, starts, axis=1)
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    total_pos, total_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1) / (total_pos * total_neg)


def bootstrap_differences(
    metric: str, y: np.ndarray, candidate: np.ndarray, champion: np.ndarray, resamples: int, seed: int
) -> np.ndarray:
    """Paired bootstrap of metric(candidate) - metric(champion): the same resampled rows for both models."""
    rng = np.random.default_rng(seed)
    n = len(y)
    diffs: list[np.ndarray] = []
    fast = metric == "roc_auc" and candidate.ndim == 1
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        if fast:
            flat = (idx + (np.arange(size) * n)[:, None]).ravel()
            counts = np.bincount(flat, minlength=size * n).reshape(size, n).astype(float)
            diffs.append(_weighted_auc(y, candidate, counts) - _weighted_auc(y, champion, counts))
        else:
            diffs.append(np.array([score(metric, y[i], candidate[i]) - score(metric, y[i], champion[i]) for i in idx]))
    return np.concatenate(diffs)


def no_regression_bootstrap(
    cfg: ChampionGate,
    metric: str,
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray | None,
    seed: int,
) -> GateResult:
    """Non-inferiority vs the champion on the same test rows, decided by a paired bootstrap CI.

    improvement = (candidate - champion) in the metric's better direction; the gate passes when the lower
    end of the two-sided `confidence` interval is >= -tolerance: the data show the candidate is not worse
    than the champion by more than the tolerance. With no champion, `first_run` decides (logged).
    """
    spec = get_metric(metric)
    name = "no_regression_vs_champion"
    if champion is None:
        ok = cfg.first_run == "promote"
        reason = f"no champion in the registry: first-run policy '{cfg.first_run}' " + (
            "skips the comparison" if ok else "rejects until a champion is set by hand"
        )
        return GateResult(name, None, None, ok, reason, metric, spec.direction, {"first_run": cfg.first_run})
    sign = 1.0 if spec.greater_is_better else -1.0
    point = sign * (score(metric, y, candidate) - score(metric, y, champion))
    diffs = sign * bootstrap_differences(metric, y, candidate, champion, cfg.resamples, seed)
    finite = diffs[np.isfinite(diffs)]
    alpha = (1.0 - cfg.confidence) / 2.0
    if not math.isfinite(point) or len(finite) < 0.9 * len(diffs):
        reason = f"{metric} difference vs champion is not finite on test ({point}); cannot show no regression"
        return GateResult(name, None, -cfg.tolerance, False, reason, metric, spec.direction)
    low, high = (float(q) for q in np.quantile(finite, [alpha, 1.0 - alpha]))
    ok = low >= -cfg.tolerance
    reason = (
        f"{metric} improvement vs champion {point:+.4f} (better direction), {cfg.confidence:.0%} paired bootstrap "
        f"CI [{low:+.4f}, {high:+.4f}] over {cfg.resamples} resamples: lower end "
        f"{'>=' if ok else '<'} -tolerance {-cfg.tolerance:+.4f}"
        + ("" if ok else ": the candidate may be worse than the champion")
    )
    details = {"improvement": point, "ci_low": low, "ci_high": high, "confidence": cfg.confidence,
               "resamples": cfg.resamples, "tolerance": cfg.tolerance}  # fmt: skip
    return GateResult(name, low, -cfg.tolerance, ok, reason, metric, spec.direction, details)


def slice_keys(column: pd.Series, edges: Sequence[float] | None) -> np.ndarray:
    """Slice value of each row: the category, or the band of a numeric value ("< 30", "30-45", ">= 60")."""
    if edges is None:
        return column.astype("str").where(column.notna(), "(missing)").to_numpy()
    cuts = sorted(edges)
    names = [f"< {cuts[0]:g}"] + [f"{a:g}-{b:g}" for a, b in itertools.pairwise(cuts)] + [f">= {cuts[-1]:g}"]
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    codes = np.searchsorted(np.asarray(cuts, dtype=float), values, side="right")
    return np.where(np.isnan(values), "(missing)", np.asarray(names, dtype=object)[codes]).astype(str)


def slice_table(
    X: pd.DataFrame,
    columns: Sequence[str],
    bands: Mapping[str, Sequence[float]],
    metric: str,
    y: np.ndarray,
    scores: np.ndarray,
    min_rows: int,
) -> dict[str, list[dict[str, Any]]]:
    """The metric per slice value (largest first); slices under min_rows are listed with their n, unscored."""
    out: dict[str, list[dict[str, Any]]] = {}
    for column in [*columns, *[b for b in bands if b not in columns]]:
        keys = slice_keys(X[column], bands.get(column))
        values, counts = np.unique(keys, return_counts=True)
        entries = []
        for value, n in sorted(zip(values, counts, strict=True), key=lambda vc: (-vc[1], vc[0])):
            entry: dict[str, Any] = {"value": str(value), "n": int(n), "metric": None}
            if n >= min_rows:
                mask = keys == value
                entry["metric"] = _finite(score(metric, y[mask], scores[mask]))
                if entry["metric"] is None:
                    entry["skipped"] = f"{metric} is not defined on this slice (e.g. one class only)"
            else:
                entry["skipped"] = f"fewer than {min_rows} test rows"
            entries.append(entry)
        out[column] = entries
    return out


def slices_gate(
    cfg: SlicesGate,
    metric: str,
    overall: float,
    table: dict[str, list[dict[str, Any]]],
    champion_table: dict[str, list[dict[str, Any]]] | None,
) -> GateResult:
    """Worst slice gap vs overall bounded, and no slice worse than the champion's same slice beyond tolerance.

    Adds `gap` (and `champion`, `drop`) to each scored entry of `table`, in the metric's better direction:
    positive gap = the slice is worse than overall; positive drop = worse than the champion's slice.
    """
    spec = get_metric(metric)
    sign = 1.0 if spec.greater_is_better else -1.0
    champ = {(c, e["value"]): e.get("metric") for c, es in (champion_table or {}).items() for e in es}
    worst_gap: tuple[float, str] = (-math.inf, "")
    worst_drop: tuple[float, str] = (-math.inf, "")
    for column, entries in table.items():
        for entry in entries:
            if entry["metric"] is None:
                continue
            entry["gap"] = sign * (overall - entry["metric"])
            worst_gap = max(worst_gap, (entry["gap"], f"{column}={entry['value']}"))
            before = champ.get((column, entry["value"]))
            if before is not None:
                entry["champion"] = before
                entry["drop"] = sign * (before - entry["metric"])
                worst_drop = max(worst_drop, (entry["drop"], f"{column}={entry['value']}"))
    if worst_gap[1] == "":
        return skipped("slices", f"no slice has at least {cfg.min_rows} test rows and a defined {metric}")
    gap_ok = worst_gap[0] <= cfg.max_gap
    drop_ok = worst_drop[1] == "" or worst_drop[0] <= cfg.champion_tolerance
    parts = [f"worst slice {worst_gap[1]} trails overall {metric} by {worst_gap[0]:.4f} (max_gap {cfg.max_gap})"]
    if worst_drop[1]:
        parts.append(
            f"worst drop vs the champion's slice: {worst_drop[1]} {worst_drop[0]:+.4f} "
            f"(champion_tolerance {cfg.champion_tolerance})"
        )
    else:
        parts.append("no champion slices to compare with")
    details = {
        "worst_gap": worst_gap[0],
        "worst_gap_slice": worst_gap[1],
        "worst_drop": worst_drop[0] if worst_drop[1] else None,
        "worst_drop_slice": worst_drop[1] or None,
    }
    ok = gap_ok and drop_ok
    return GateResult("slices", worst_gap[0], cfg.max_gap, ok, "; ".join(parts), metric, spec.direction, details)


def decide(gates: list[GateResult]) -> tuple[str, list[str]]:
    """'promote' only if every gate passed; otherwise 'reject' with the failed gate names."""
    failed = [g.name for g in gates if not g.passed]
    return ("reject" if failed else "promote"), failed
