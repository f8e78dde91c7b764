"""Gate-aware selection: which candidate `evaluate` gates, chosen without test labels.

Candidates are ranked by their valid score (models/candidates/summary.json) in the metric's direction.
Those within `tie_tolerance` x |best valid score| of the best are *tied*: among them the smaller built model
(bytes on disk, then the better valid score, then the name) goes first; the rest follow by valid score.
In that order each candidate is *screened* by the label-free gates of `evaluate.selection.screen` (latency,
serving, directional, invariance: they read features and predictions, never test labels), in the order
given, stopping at its first failure; the first candidate to pass every screening gate is chosen. So
usually one candidate is screened, and the screening results are reused by the gate policy.

If no candidate passes, the top-ranked one is chosen anyway (`all_screened_out`): the full policy then
rejects it, and the record says why. Pure: building and scoring a candidate are the caller's callables.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain.evaluation.gates import GateResult
from retrain.metrics import get_metric

logger = logging.getLogger(__name__)

CHOSEN = "chosen"
SCREENED_OUT = "screened_out"
TIED_LARGER = "tied_larger"
NOT_SCREENED = "not_screened"
"""A candidate's status in the record's ranking: gated; failed a screening gate; tied with the chosen one
and larger (never screened); ranked below the chosen one (never screened)."""

GateThunk = tuple[bool, Callable[[], GateResult]]
"""(enabled, run it): a gate as the policy would run it; a disabled gate neither screens nor costs anything."""


@dataclass(frozen=True)
class Ranked:
    """A candidate in rank order: its valid score, built size in bytes and whether it is tied with the best."""

    family: str
    valid_score: float | None
    size_bytes: int
    tied: bool


@dataclass
class Screening:
    """One candidate's screening: the gates that ran (in order, up to the first failure) and their seconds."""

    family: str
    results: dict[str, GateResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> GateResult | None:
        """The screening gate that failed (None: passed every enabled one)."""
        return next((r for r in self.results.values() if not r.passed), None)

    @property
    def passed(self) -> bool:
        """Whether the candidate passed every enabled screening gate."""
        return self.failed is None


@dataclass
class Selection:
    """The ranking, the chosen family and every screening that ran (by family)."""

    ranking: list[Ranked]
    chosen: str
    screenings: dict[str, Screening]
    all_screened_out: bool


def _finite(value: Any) -> float | None:
    """A valid score as a float, or None when it is missing or not finite (ranked last, never tied)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def directory_bytes(path: Path) -> int:
    """Bytes of every file under a built model directory: the size that breaks ties (deterministic)."""
    return sum(p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file())


def rank_candidates(
    valid_scores: Mapping[str, Any], sizes: Mapping[str, int], metric: str, tie_tolerance: float
) -> list[Ranked]:
    """Rank order: tied candidates (within tie_tolerance x |best| of the best) smallest first, then by valid score.

    Deterministic for the same inputs: ties in size fall back to the better valid score, then to the name;
    a missing or non-finite valid score is ranked last.
    """
    if not valid_scores:
        raise ValueError("no candidates to rank (models/candidates/summary.json lists no family)")
    sign = 1.0 if get_metric(metric).greater_is_better else -1.0
    scores = {family: _finite(value) for family, value in valid_scores.items()}
    finite = {f: s for f, s in scores.items() if s is not None}
    best = max((sign * s for s in finite.values()), default=None)
    margin = tie_tolerance * abs(best) if best is not None else 0.0

    def tied(family: str) -> bool:
        s = scores[family]
        return s is not None and best is not None and best - sign * s <= margin

    def by_score(family: str) -> tuple[int, float, str]:
        s = scores[family]
        return (1, 0.0, family) if s is None else (0, -sign * s, family)

    group = sorted((f for f in scores if tied(f)), key=lambda f: (sizes[f], *by_score(f)))
    rest = sorted((f for f in scores if not tied(f)), key=by_score)
    return [Ranked(f, scores[f], int(sizes[f]), f in group) for f in [*group, *rest]]


def screen(family: str, names: Sequence[str], gates: Mapping[str, GateThunk]) -> Screening:
    """Run the enabled screening gates `names` in order, stopping at the first that fails."""
    result = Screening(family)
    for name in names:
        enabled, run = gates[name]
        if not enabled:
            continue
        started = time.perf_counter()
        outcome = run()
        result.seconds[name] = round(time.perf_counter() - started, 3)
        result.results[name] = outcome
        if not outcome.passed:
            break
    return result


def select(ranking: Sequence[Ranked], screen_fn: Callable[[Ranked], Screening]) -> Selection:
    """The first candidate in rank order whose screening passes (lazy: later ones are never screened).

    None passes: the top-ranked one is chosen, so the gate policy records why it is rejected.
    """
    screenings: dict[str, Screening] = {}
    for candidate in ranking:
        screenings[candidate.family] = screen_fn(candidate)
        if screenings[candidate.family].passed:
            return Selection(list(ranking), candidate.family, screenings, all_screened_out=False)
    return Selection(list(ranking), ranking[0].family, screenings, all_screened_out=True)


def _gate_summary(result: GateResult) -> dict[str, Any]:
    """A screening gate's outcome as the selection record keeps it (the full result is in `gates`)."""
    return {"status": result.status, "value": result.value, "threshold": result.threshold, "reason": result.reason}


def failure_short(result: GateResult) -> str:
    """'latency failed (p95_ms 31.2, threshold 20)': which screening gate, its value and threshold."""
    value = "none" if result.value is None else f"{result.value:.4g}"
    threshold = "none" if result.threshold is None else f"{result.threshold:.4g}"
    return f"{result.name} failed ({result.metric or 'value'} {value}, threshold {threshold})"


def failure_text(result: GateResult) -> str:
    """`failure_short` plus the gate's own reason."""
    return f"{failure_short(result)}: {result.reason}"


def selection_record(
    selection: Selection, *, metric: str, tie_tolerance: float, screen_names: Iterable[str]
) -> dict[str, Any]:
    """The gate record's `selection` section: ranking, chosen family, why each candidate was passed over."""
    chosen = next(r for r in selection.ranking if r.family == selection.chosen)
    position = {r.family: i for i, r in enumerate(selection.ranking)}
    rows, passed_over = [], []
    for i, entry in enumerate(selection.ranking):
        row: dict[str, Any] = {
            "rank": i + 1,
            "family": entry.family,
            "valid_score": entry.valid_score,
            "size_bytes": entry.size_bytes,
            "tied": entry.tied,
        }
        screening = selection.screenings.get(entry.family)
        if screening is not None:
            row["screening"] = {name: _gate_summary(r) for name, r in screening.results.items()}
        failed = screening.failed if screening is not None else None
        if entry.family == selection.chosen:
            row["status"] = CHOSEN
            row["short"] = "chosen (every candidate screened out)" if selection.all_screened_out else "chosen"
            row["reason"] = (
                f"top-ranked; every candidate failed screening ({failure_text(failed)})"
                if selection.all_screened_out and failed is not None
                else "passed every screening gate"
                if screening is not None and screening.results
                else "top-ranked (no screening gate enabled)"
            )
        elif failed is not None:
            row["status"] = SCREENED_OUT
            row["short"] = f"passed over: {failure_short(failed)}"
            row["reason"] = failure_text(failed)
            passed_over.append(
                {"family": entry.family, "reason": row["reason"], "gate": failed.name, "value": failed.value,
                 "threshold": failed.threshold}
            )  # fmt: skip
        elif entry.tied and chosen.tied and position[entry.family] > position[chosen.family]:
            row["status"] = TIED_LARGER
            bigger = "larger than" if entry.size_bytes > chosen.size_bytes else "the same size as"
            row["short"] = f"passed over: tied, {bigger} {chosen.family}"
            row["reason"] = (
                f"tied with the best valid score (within {tie_tolerance:g} x |best|), {bigger} {chosen.family} "
                f"({entry.size_bytes} vs {chosen.size_bytes} bytes)"
            )
            passed_over.append({"family": entry.family, "reason": row["reason"], "gate": None})
        else:
            row["status"] = NOT_SCREENED
            row["short"] = "not screened"
            row["reason"] = f"ranked below {chosen.family}: not screened"
        rows.append(row)
    return {
        "metric": metric,
        "direction": get_metric(metric).direction,
        "tie_tolerance": tie_tolerance,
        "screen": list(screen_names),
        "ranking": rows,
        "chosen": selection.chosen,
        "chosen_rank": position[selection.chosen] + 1,
        "all_screened_out": selection.all_screened_out,
        "passed_over": passed_over,
        "screening_seconds": round(sum(sum(s.seconds.values()) for s in selection.screenings.values()), 3),
    }


def selection_lines(record: Mapping[str, Any]) -> list[str]:
    """One line per passed-over candidate (and one if every candidate was screened out), for the log."""
    lines = [f"selection: passed over {p['family']}: {p['reason']}" for p in record.get("passed_over", [])]
    if record.get("all_screened_out"):
        lines.append(
            f"selection: every candidate failed screening; gating the top-ranked {record['chosen']} "
            "so the record shows why it is rejected"
        )
    return lines
