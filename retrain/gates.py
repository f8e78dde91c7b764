"""Offline evaluation gates: each returns value, threshold, pass/fail and a reason a person can act on.

Gates respect the metric's direction (retrain/metrics.py): for r2 or roc_auc higher is better, for rmse,
mae or log_loss lower is better. In a gate record `value` is the candidate's real metric value,
`threshold` the bound it had to reach, and `direction` says which side passes (`higher_is_better`:
value >= threshold; `lower_is_better`: value <= threshold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from retrain.metrics import get_metric


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


def no_regression(metric: str, candidate: float, champion: float | None, tolerance: float) -> GateResult:
    """Not worse than the champion on the same test data beyond the tolerance; skipped when none exists."""
    spec = get_metric(metric)
    if champion is None:
        return GateResult(
            "no_regression_vs_champion",
            None,
            None,
            True,
            "no champion in the registry: first-run policy skips the comparison",
            metric,
            spec.direction,
        )
    sign = 1.0 if spec.greater_is_better else -1.0
    bound = champion - sign * tolerance
    improvement = sign * (candidate - champion)
    ok = math.isfinite(improvement) and improvement >= -tolerance
    reason = (
        f"{metric} {_fmt(candidate)} vs champion {champion:.4f} ({spec.direction.replace('_', ' ')}): "
        f"change {improvement:+.4f} in the better direction, {'within' if ok else 'beyond'} tolerance {tolerance} "
        f"(bound {bound:.4f})"
    )
    return GateResult("no_regression_vs_champion", _finite(candidate), bound, ok, reason, metric, spec.direction)


def _finite(value: float) -> float | None:
    """None for NaN/inf, so gate records stay valid JSON."""
    return value if math.isfinite(value) else None


def decide(gates: list[GateResult]) -> tuple[str, list[str]]:
    """'promote' only if every gate passed; otherwise 'reject' with the failed gate names."""
    failed = [g.name for g in gates if not g.passed]
    return ("reject" if failed else "promote"), failed
