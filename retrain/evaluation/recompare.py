"""Re-comparison at promotion: the gate policy again, against a champion that moved since evaluation.

Pure. Only three gates depend on the champion: `no_regression_vs_champion` (paired bootstrap on the same
test rows), `slices` (the champion's per-slice table) and `latency` (its relative bounds use the champion's
recorded latency and size). `recompare` runs `gate_policy` itself with the new champion's scores: those three
are decided again from the evaluated candidate's test scores (latency from its recorded measurements, not
timed again); every other gate is reused from the gate record as it was decided, never run twice.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig, Params
from retrain.evaluation.gates import GateResult, decide
from retrain.evaluation.latency import latency_gate
from retrain.metrics import score

CHAMPION_GATES = ("no_regression_vs_champion", "slices", "latency")
"""The gates whose outcome depends on which version is champion."""


def gate_from_dict(entry: Mapping[str, Any]) -> GateResult:
    """A GateResult back from its record form (`GateResult.to_dict`)."""
    names = {f.name for f in dataclasses.fields(GateResult)}
    return GateResult(**{k: v for k, v in entry.items() if k in names})


def candidate_matches(record: Mapping[str, Any], metric: str, y_test: np.ndarray, scores: np.ndarray) -> str | None:
    """Why these test scores are not the evaluated candidate's (score differs from the record), or None."""
    recorded = (record.get("scores") or {}).get("candidate")
    now = score(metric, y_test, scores)
    if recorded is None or not math.isclose(now, float(recorded), rel_tol=1e-9, abs_tol=1e-12):
        return f"candidate test {metric} is {now:.6f} on the test split now, {recorded} in the gate record"
    return None


def recompare(
    params: Params,
    dataset: DatasetConfig,
    record: Mapping[str, Any],
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    scores: np.ndarray,
    champion_scores: np.ndarray | None,
    champion_latency: Mapping[str, float] | None,
) -> tuple[list[GateResult], dict[str, Any]]:
    """Every gate of the policy against the new champion: champion-dependent ones decided again, the rest reused.

    `scores`: the evaluated candidate's test scores; `champion_scores`: the new champion's on the same rows
    (None: no champion any more, the first-run policy decides); `champion_latency`: the `latency` of the new
    champion's gate record (None: relative latency bounds not applied, as in evaluate).
    """
    from retrain.evaluation.policy import gate_policy

    previous = {g["name"]: gate_from_dict(g) for g in record["gates"]}
    reused = {name: gate for name, gate in previous.items() if name not in CHAMPION_GATES}
    latency = dict(record.get("latency") or {})
    cfg = params.evaluate.gates

    def measure_latency() -> GateResult:
        """The latency gate from the candidate's recorded measurements and the new champion's."""
        if not latency:
            return previous.get("latency") or latency_gate(latency, 0.0, cfg=cfg.latency, champion=None)
        return latency_gate(latency, latency.get("size_mb", math.nan), cfg=cfg.latency, champion=champion_latency)

    def check_serving() -> GateResult:
        """Reused: serving does not depend on the champion (decided at evaluate)."""
        return previous["serving"]

    context = {
        "candidate_score": score(params.evaluate.metric, y_test, scores),
        "baseline_scores": dict((record.get("scores") or {}).get("baselines") or {}),
        "champion_scores": champion_scores,
        "champion_record": None,
        "confidence_threshold": record.get("confidence_threshold"),
    }
    started = time.perf_counter()
    gates, extra = gate_policy(
        params,
        dataset,
        _unused_score_fn,
        X_test,
        y_test,
        scores,
        context,
        measure_latency,
        check_serving,
        screened=reused,
        screened_seconds=dict(record.get("gate_seconds") or {}),
    )
    extra["recompare_seconds"] = round(time.perf_counter() - started, 3)
    return gates, extra


def _unused_score_fn(X: pd.DataFrame) -> np.ndarray:
    """Every gate that scores perturbed rows is reused from the record: reaching this is a bug."""
    raise RuntimeError("re-comparison must not score new rows: a label-free gate was not reused from the record")


def recompared_record(
    record: Mapping[str, Any],
    gates: list[GateResult],
    extra: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    champion_score: float | None,
) -> dict[str, Any]:
    """The gate record as re-compared: the new champion, its score, every gate, the new decision, what changed."""
    decision, failed = decide(gates)
    before = {g["name"]: g for g in record["gates"]}
    changed = [
        {
            "name": g.name,
            "status": g.status,
            "value": g.value,
            "threshold": g.threshold,
            "reason": g.reason,
            "status_at_evaluate": (before.get(g.name) or {}).get("status"),
        }
        for g in gates
        if g.name in CHAMPION_GATES
    ]
    scores = dict(record.get("scores") or {}) | {"champion": champion_score}
    return {
        **record,
        "gates": [g.to_dict() for g in gates],
        "decision": decision,
        "failed_gates": failed,
        "champion": dict(champion) if champion is not None else None,
        "scores": scores,
        "slices": extra.get("slices", record.get("slices")),
        "recompared": {
            "champion_at_evaluate": record.get("champion"),
            "champion": dict(champion) if champion is not None else None,
            "decision_at_evaluate": record.get("decision"),
            "decision": decision,
            "failed_gates": failed,
            "gates": changed,
            "seconds": extra.get("recompare_seconds"),
        },
    }


def lost_line(record: Mapping[str, Any], metric: str) -> str:
    """One line naming the new champion, each failed champion gate and its numbers (for logs and promotion.json)."""
    info = record["recompared"]
    champion = info["champion"] or {}
    parts = [f"{g['name']} {g['status'].upper()}: {g['reason']}" for g in info["gates"] if g["status"] == "fail"]
    scores = record.get("scores") or {}
    head = (
        f"champion moved since evaluation (version {(info['champion_at_evaluate'] or {}).get('version')} -> "
        f"{champion.get('version')}); re-compared on the same test rows: candidate {metric} "
        f"{_fmt(scores.get('candidate'))} vs champion version {champion.get('version')} {_fmt(scores.get('champion'))}"
    )
    return head + ("; " + "; ".join(parts) if parts else "")


def _fmt(value: Any) -> str:
    """A score for a message."""
    return "none" if value is None else f"{float(value):.4f}"
