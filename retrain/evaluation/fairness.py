"""Group fairness of a binary classifier: demographic-parity and equalized-odds differences per attribute.

Predictions are P(positive) >= `threshold`. Per attribute, every group (attribute value) with at least
`min_rows` test rows gets its selection rate, true-positive rate and false-positive rate; rows with a
missing attribute value belong to no group. The demographic-parity difference is the range of selection
rates; the equalized-odds difference is the larger of the TPR range and the FPR range.

The rates equal fairlearn's MetricFrame / demographic_parity_difference / equalized_odds_difference on
Adult (benchmarks/fairlearn_compare.py); fairlearn is not used, see docs/gates.md "Fairness metrics vs
fairlearn" (min_rows, missing values and undefined rates are ours, and it is ~100x slower).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import FairnessGate
from retrain.evaluation.gates import GateResult, skipped

NAME = "fairness"


def _rate(numerator: int, denominator: int) -> float:
    """A share, NaN when there is nothing to divide by."""
    return numerator / denominator if denominator else math.nan


def _json(value: float) -> float | None:
    """None for NaN, so gate records stay valid JSON."""
    return round(float(value), 6) if math.isfinite(value) else None


def _range(table: dict[str, dict[str, Any]], key: str) -> tuple[float, str | None, str | None]:
    """max - min of a per-group rate (groups where it is defined), with the max and min group names."""
    defined = {g: row[key] for g, row in table.items() if row[key] is not None}
    if len(defined) < 2:
        return 0.0, None, None
    hi = max(defined, key=lambda g: defined[g])
    lo = min(defined, key=lambda g: defined[g])
    return defined[hi] - defined[lo], hi, lo


def group_table(y: np.ndarray, predicted: np.ndarray, group: pd.Series, min_rows: int) -> dict[str, dict[str, Any]]:
    """Per group value: rows, selection rate, TPR, FPR (None where undefined), `gated` if >= min_rows rows."""
    raw = np.asarray(group, dtype=object)
    missing = pd.isna(raw)
    labels = np.array([str(v) for v in raw], dtype=object)
    labels[missing] = None
    codes, uniques = pd.factorize(labels, sort=True)
    k = len(uniques)
    valid = codes >= 0
    c = codes[valid]
    yv = y[valid].astype(np.int64)
    pv = predicted[valid].astype(np.int64)
    rows = np.bincount(c, minlength=k)
    selected = np.bincount(c, weights=pv, minlength=k)
    positives = np.bincount(c, weights=yv, minlength=k)
    true_pos = np.bincount(c, weights=pv * yv, minlength=k)
    false_pos = np.bincount(c, weights=pv * (1 - yv), minlength=k)
    table = {}
    for i, name in enumerate(uniques.tolist()):
        n, pos = int(rows[i]), int(positives[i])
        table[str(name)] = {
            "rows": n,
            "gated": n >= min_rows,
            "selection_rate": _json(_rate(int(selected[i]), n)),
            "tpr": _json(_rate(int(true_pos[i]), pos)),
            "fpr": _json(_rate(int(false_pos[i]), n - pos)),
        }
    return table


def fairness_gate(
    y: np.ndarray, scores: np.ndarray, groups: Mapping[str, pd.Series], *, task: str, cfg: FairnessGate
) -> GateResult:
    """Every attribute's DP difference <= its bound and EO difference <= its bound (binary tasks)."""
    if task != "binary":
        return skipped(NAME, f"fairness is defined for binary tasks (P(positive) at a threshold); task is {task!r}")
    if not cfg.enabled:
        return skipped(NAME, "disabled in evaluate.gates.fairness")
    if not groups:
        return skipped(NAME, "no protected attributes (evaluate.gates.fairness.attributes, dataset.protected)")
    p = np.asarray(scores, dtype=float).reshape(-1)
    target = np.asarray(y).astype(np.int64)
    if len(p) == 0 or not np.all(np.isfinite(p)):
        reason = "fairness: scores are empty or not finite; group rates are undefined"
        return GateResult(
            NAME,
            None,
            cfg.max_demographic_parity_difference,
            False,
            reason,
            "demographic_parity_difference",
            "lower_is_better",
        )
    predicted = (p >= cfg.threshold).astype(np.int64)
    details: dict[str, Any] = {
        "threshold": cfg.threshold,
        "min_rows": cfg.min_rows,
        "max_demographic_parity_difference": cfg.max_demographic_parity_difference,
        "max_equalized_odds_difference": cfg.max_equalized_odds_difference,
        "attributes": {},
    }
    # each candidate offender: (over its bound, share of its bound, attribute, metric, value, bound, message)
    findings: list[tuple[bool, float, str, str, float, float, str]] = []
    for attribute, group in groups.items():
        if len(group) != len(p):
            raise ValueError(f"fairness: attribute {attribute!r} has {len(group)} rows, scores have {len(p)}")
        table = group_table(target, predicted, group, cfg.min_rows)
        gated = {g: row for g, row in table.items() if row["gated"]}
        entry: dict[str, Any] = {"groups": table}
        details["attributes"][attribute] = entry
        if len(gated) < 2:
            entry["note"] = f"fewer than two groups with >= {cfg.min_rows} rows: not gated"
            continue
        dp, dp_hi, dp_lo = _range(gated, "selection_rate")
        tpr, tpr_hi, tpr_lo = _range(gated, "tpr")
        fpr, fpr_hi, fpr_lo = _range(gated, "fpr")
        eo_from_tpr = tpr >= fpr
        eo = tpr if eo_from_tpr else fpr
        entry.update(
            demographic_parity_difference=round(dp, 6),
            equalized_odds_difference=round(eo, 6),
            tpr_difference=round(tpr, 6),
            fpr_difference=round(fpr, 6),
        )
        dp_msg = (
            f"{attribute}: demographic parity difference {dp:.4f} (selection rate {dp_hi} "
            f"{gated[dp_hi]['selection_rate']:.4f} vs {dp_lo} {gated[dp_lo]['selection_rate']:.4f})"
            if dp_hi is not None
            else f"{attribute}: demographic parity difference 0"
        )
        key, hi, lo = ("tpr", tpr_hi, tpr_lo) if eo_from_tpr else ("fpr", fpr_hi, fpr_lo)
        eo_msg = (
            f"{attribute}: equalized odds difference {eo:.4f} ({key.upper()} {hi} {gated[hi][key]:.4f} vs "
            f"{lo} {gated[lo][key]:.4f})"
            if hi is not None
            else f"{attribute}: equalized odds difference 0"
        )
        for metric, value, bound, msg in (
            ("demographic_parity_difference", dp, cfg.max_demographic_parity_difference, dp_msg),
            ("equalized_odds_difference", eo, cfg.max_equalized_odds_difference, eo_msg),
        ):
            share = value / bound if bound > 0 else (math.inf if value > 0 else 0.0)
            findings.append((value > bound, share, attribute, metric, value, bound, msg))
    if not findings:
        return skipped(NAME, f"no attribute has two groups with >= {cfg.min_rows} test rows ({sorted(groups)})")
    failed = [f for f in findings if f[0]]
    worst = max(findings, key=lambda f: (f[0], f[1]))
    _, _, attribute, metric, value, bound, msg = worst
    details["worst"] = {"attribute": attribute, "metric": metric}
    if failed:
        others = f"; {len(failed) - 1} more over bound" if len(failed) > 1 else ""
        reason = f"{msg} > max {bound}{others}"
    else:
        reason = f"every attribute within bounds; closest: {msg} <= max {bound}"
    return GateResult(NAME, round(value, 6), bound, not failed, reason, metric, "lower_is_better", details)
