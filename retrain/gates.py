"""Offline evaluation gates: each returns value, threshold, pass/fail and a reason a person can act on."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the gate record."""
        return asdict(self)


def metric_is_finite(metric: str, value: float) -> GateResult:
    """A NaN or infinite metric is a failure, never a pass by comparison quirks."""
    ok = math.isfinite(value)
    reason = f"{metric} = {value:.4f}" if ok else f"{metric} is {value}: the candidate's scores are not usable"
    return GateResult("metric_is_finite", value if ok else None, None, ok, reason)


def beats_baselines(metric: str, candidate: float, baselines: dict[str, float], margin: float) -> GateResult:
    """The candidate must beat the best baseline by at least the margin."""
    best_name = max(baselines, key=lambda k: baselines[k])
    needed = baselines[best_name] + margin
    ok = math.isfinite(candidate) and candidate >= needed
    reason = (
        f"{metric} {candidate:.4f} vs best baseline {best_name} {baselines[best_name]:.4f} + margin {margin} "
        f"= {needed:.4f}: {'beats' if ok else 'does not beat'} it"
    )
    return GateResult("beats_baselines", candidate - baselines[best_name], margin, ok, reason)


def no_regression(metric: str, candidate: float, champion: float | None, tolerance: float) -> GateResult:
    """Not worse than the champion on the same test data beyond the tolerance; skipped when none exists."""
    if champion is None:
        return GateResult(
            "no_regression_vs_champion",
            None,
            -tolerance,
            True,
            "no champion in the registry: first-run policy skips the comparison",
        )
    delta = candidate - champion
    ok = math.isfinite(delta) and delta >= -tolerance
    reason = (
        f"{metric} {candidate:.4f} vs champion {champion:.4f}: delta {delta:+.4f} "
        f"{'within' if ok else 'beyond'} tolerance -{tolerance}"
    )
    return GateResult("no_regression_vs_champion", delta, -tolerance, ok, reason)


def decide(gates: list[GateResult]) -> tuple[str, list[str]]:
    """'promote' only if every gate passed; otherwise 'reject' with the failed gate names."""
    failed = [g.name for g in gates if not g.passed]
    return ("reject" if failed else "promote"), failed
