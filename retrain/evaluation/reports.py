"""What DVC shows of a run: the metrics file (`dvc metrics`, `dvc exp show` columns) and the plot rows (`dvc plots`).

Pure: everything comes from data the pipeline already computed (the gate record with its `curves` and
`slices`, the candidates' learning curves), nothing is fitted or scored again. Column names are short so a
`dvc exp show` table stays readable. Every plot is a JSON list of rows and is always produced: a plot that does
not apply to the task (ROC for a regression, residuals for a classifier) is an empty list, so the declared
file exists and DVC never fails on a missing output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

DIGITS = 6
"""Values are rounded so an unchanged result gives a byte-identical file (and `dvc metrics diff` shows no noise)."""


def _num(value: Any) -> float | None:
    """A finite number rounded for JSON, or None (missing, NaN, inf, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(float(value), DIGITS) if math.isfinite(value) else None


def gate_entry(gate: Mapping[str, Any]) -> dict[str, Any]:
    """One gate as `{value, limit, pass}`: pass is 1 or 0, or "skip" for a gate that was not applied."""
    status = gate.get("status") or ("pass" if gate.get("passed") else "fail")
    verdict: int | str = "skip" if status == "skipped" else int(status == "pass")
    return {"value": _num(gate.get("value")), "limit": _num(gate.get("threshold")), "pass": verdict}


def evaluate_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The headline of a gate record: the chosen candidate's valid and test score, the champion's, every gate.

    `test_champion` is the current champion scored on the same test rows (None without a champion); `baseline`
    the best baseline's test score in the metric's direction.
    """
    scores = record.get("scores") or {}
    baselines = [v for v in (scores.get("baselines") or {}).values() if _num(v) is not None]
    lower_better = record.get("direction") == "lower_is_better"
    best_baseline = (min if lower_better else max)(baselines) if baselines else None
    gates = record.get("gates") or []
    return {
        "metric": record.get("metric"),
        "family": (record.get("candidate") or {}).get("family"),
        "valid": _num((record.get("candidate") or {}).get("valid_score")),
        "test": _num(scores.get("candidate")),
        "test_champion": _num(scores.get("champion")),
        "test_baseline": _num(best_baseline),
        "decision": record.get("decision"),
        "failed": len(record.get("failed_gates") or []),
        "gates": {gate["name"]: gate_entry(gate) for gate in gates},
    }


def promotion_metrics(promotion: Mapping[str, Any], experiment: str | None) -> dict[str, Any]:
    """What promote did (or, in a DVC experiment, would do) and the versions; the decision is evaluate's metric."""
    return {
        "action": promotion.get("action"),
        "version": promotion.get("version"),
        "champion": promotion.get("champion_version"),
        "challenger": promotion.get("challenger_version"),
        "experiment": experiment,
        # champion moved since evaluation: the version re-compared against and the re-compared decision
        "recompared_vs": ((promotion.get("recompared") or {}).get("champion") or {}).get("version"),
        "recompared_decision": (promotion.get("recompared") or {}).get("decision"),
    }


def _rows(columns: Mapping[str, Sequence[Any] | None]) -> list[dict[str, Any]]:
    """Parallel lists as a list of row dicts (empty when any column is missing)."""
    if any(values is None for values in columns.values()):
        return []
    lengths = {len(values) for values in columns.values() if values is not None}
    if len(lengths) != 1:
        return []
    n = lengths.pop()
    return [{name: _num(values[i]) for name, values in columns.items() if values is not None} for i in range(n)]


def _bin_centres(edges: Sequence[float | None]) -> list[float | None]:
    """The centre of each histogram bin."""
    return [None if lo is None or hi is None else (lo + hi) / 2 for lo, hi in itertools.pairwise(edges)]


def slice_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The test metric per slice (`column=value`), slices without a defined metric left out."""
    columns = (record.get("slices") or {}).get("columns") or {}
    return [
        {"slice": f"{column}={entry['value']}", "score": _num(entry.get("metric")), "n": int(entry.get("n", 0))}
        for column, entries in columns.items()
        for entry in entries
        if _num(entry.get("metric")) is not None
    ]


def learning_rows(curve: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Train and valid score per training-set size (the chosen family's curve; none for a family without one)."""
    if not curve:
        return []
    rows = _rows({"train": curve.get("train"), "valid": curve.get("valid")})
    sizes = curve.get("sizes") or []
    if len(sizes) != len(rows):
        return []
    return [{"rows": int(size), **row} for size, row in zip(sizes, rows, strict=True)]


def plot_rows(record: Mapping[str, Any], learning_curve: Mapping[str, Any] | None = None) -> dict[str, list[dict]]:
    """Every plot's rows by name (the keys of catalog.EVALUATE_PLOTS), from the gate record's curves."""
    curves = record.get("curves") or {}
    roc, pr, calibration = curves.get("roc") or {}, curves.get("pr") or {}, curves.get("calibration") or {}
    observed = calibration.get("fraction_positive", calibration.get("mean_actual"))
    residuals = curves.get("residuals") or {}
    vs = curves.get("predicted_vs_actual") or {}
    return {
        "roc": _rows({"fpr": roc.get("fpr"), "tpr": roc.get("tpr")}) if roc else [],
        "pr": _rows({"recall": pr.get("recall"), "precision": pr.get("precision")}) if pr else [],
        "calibration": _rows({"predicted": calibration.get("mean_predicted"), "observed": observed})
        if calibration
        else [],
        "learning_curve": learning_rows(learning_curve),
        "slices": slice_rows(record),
        "predicted_vs_actual": _rows({"predicted": vs.get("predicted"), "actual": vs.get("actual")}) if vs else [],
        "residuals": _rows({"residual": _bin_centres(residuals["edges"]), "count": residuals.get("counts")})
        if residuals.get("edges")
        else [],
    }
