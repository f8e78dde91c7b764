"""Feature drift: population stability index (PSI) of the new data against a reference snapshot.

PSI = sum over bins of (new - ref) * ln(new / ref), on bin shares. Numeric bins are the reference's
quantiles (`drift.bins` of them, ties merged) plus a bin for nulls; categorical bins are the reference's
categories plus one for values the reference never had ("other") and one for nulls. Shares are
epsilon-smoothed so an empty bin gives a large but finite PSI. Rule of thumb: < 0.1 stable, 0.1-0.25
moderate, > 0.25 a real shift.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig, DriftConfig

logger = logging.getLogger(__name__)

EPSILON = 1e-4
"""Smoothing added to every bin share before the log (an empty bin must not give an infinite PSI)."""

OTHER = "\x00other"
MISSING = "\x00missing"


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two count (or share) vectors over the same bins."""
    ref = _shares(reference)
    cur = _shares(current)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _shares(counts: np.ndarray) -> np.ndarray:
    """Bin shares, epsilon-smoothed and renormalised."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    shares = counts / total if total > 0 else np.full(len(counts), 1.0 / len(counts))
    smoothed = shares + EPSILON
    return smoothed / smoothed.sum()


def numeric_edges(reference: pd.Series, bins: int) -> np.ndarray:
    """Inner bin edges: the reference's quantiles, duplicates (ties, constant columns) merged."""
    values = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.array([])
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def numeric_counts(series: pd.Series, edges: np.ndarray) -> np.ndarray:
    """Counts per quantile bin, then one count for nulls (or text that is not a number)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="right")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(float)
    return np.append(counts, float(missing.sum()))


def category_counts(series: pd.Series, categories: list[str]) -> np.ndarray:
    """Counts per reference category, then one for unseen values and one for nulls."""
    keys = series.astype("str").where(series.notna(), MISSING)
    known = set(categories)
    keys = keys.where(keys.isin(known) | (keys == MISSING), OTHER)
    counts = keys.value_counts()
    return np.array([float(counts.get(k, 0)) for k in [*categories, OTHER, MISSING]])


def column_psi(reference: pd.Series, current: pd.Series, numeric: bool, bins: int) -> float:
    """PSI of one column (numeric: reference quantile bins; category: reference categories)."""
    if numeric:
        edges = numeric_edges(reference, bins)
        return psi(numeric_counts(reference, edges), numeric_counts(current, edges))
    categories = sorted(str(v) for v in reference.dropna().unique())
    return psi(category_counts(reference, categories), category_counts(current, categories))


def feature_drift(
    reference: pd.DataFrame, current: pd.DataFrame, dataset: DatasetConfig, cfg: DriftConfig
) -> dict[str, Any]:
    """PSI of every declared feature, which ones exceed `drift.psi_threshold`, and the largest PSI."""
    features: dict[str, dict[str, Any]] = {}
    for name in dataset.features:
        numeric = dataset.schema[name].type != "category"
        entry: dict[str, Any] = {"type": "numeric" if numeric else "category"}
        if name not in reference.columns or name not in current.columns:
            where = "reference" if name not in reference.columns else "current"
            entry.update(psi=None, drifted=False, note=f"not in the {where} snapshot")
        else:
            value = column_psi(reference[name], current[name], numeric, cfg.bins)
            entry.update(psi=round(value, 6), drifted=value > cfg.psi_threshold)
        features[name] = entry
    scored = {c: e["psi"] for c, e in features.items() if e["psi"] is not None}
    drifted = sorted((c for c, e in features.items() if e["drifted"]), key=lambda c: -scored[c])
    return {
        "psi_threshold": cfg.psi_threshold,
        "bins": cfg.bins,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "features": features,
        "drifted": drifted,
        "max_psi": max(scored.values()) if scored else None,
    }


def drift_without_reference(action: str, reference: str) -> dict[str, Any] | None:
    """The drift section when nothing is compared (drift off, or no reference snapshot); None: compare.

    `reference` is validate's reference input: the champion's snapshot md5, `none`, or `off` (drift and
    champion domains both off). Drift is off by its own `action` even when champion domains need the md5.
    """
    if action == "off" or reference == "off":
        return {"status": "off", "action": action}
    if reference == "none":
        return {
            "status": "skipped",
            "action": action,
            "reason": "no reference: no champion yet, or the champion was trained on this very snapshot",
        }
    return None
