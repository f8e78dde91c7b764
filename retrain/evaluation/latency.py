"""Serving cost of a model: single-row latency percentiles, size on disk, and the latency/size gate.

Latency is what one online request pays: one call per single-row DataFrame (rows are sliced before the
clock starts), after a warm-up, timed with `time.perf_counter`. Size is the sum of the model directory's
file sizes in MB (10^6 bytes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import LatencyGate
from retrain.evaluation.gates import GateResult, skipped

WARMUP_CALLS = 10
"""Untimed calls first: the first predictions pay for lazy imports, caches and thread pools."""

GATE = "latency"
"""The gate's name in the gate record (its key in `evaluate.gates`)."""


def single_row_latency_ms(predict: Callable[[pd.DataFrame], Any], X: pd.DataFrame, rows: int) -> dict[str, float]:
    """p50/p95/p99/mean milliseconds of `rows` single-row calls (rows of X reused in order if X is shorter)."""
    if X.empty:
        raise ValueError("single_row_latency_ms needs at least one row to time")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    singles = [X.iloc[[i % len(X)]] for i in range(rows)]
    for frame in singles[: min(WARMUP_CALLS, rows)]:
        predict(frame)
    times = np.empty(rows)
    clock = time.perf_counter
    for i, frame in enumerate(singles):
        start = clock()
        predict(frame)
        times[i] = clock() - start
    ms = times * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(ms.mean()), "rows": rows}


def directory_size_mb(path: Path) -> float:
    """Bytes of every file under `path` (or of the file itself) in MB; what the registry stores and serving loads."""
    if path.is_file():
        return path.stat().st_size / 1e6
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {path}")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def latency_gate(
    latency: Mapping[str, float], size_mb: float, *, cfg: LatencyGate, champion: Mapping[str, float] | None
) -> GateResult:
    """p95 single-row latency and size within absolute bounds and, when configured, within ratios of the champion.

    `value` is the candidate's p95 in ms and `threshold` the tightest p95 bound that applied; `details`
    lists every check (bound, value, pass) so the reason can name the worst one.
    """
    if not cfg.enabled:
        return skipped(GATE, "latency/size gate disabled (evaluate.gates.latency.enabled: false)")
    p95 = float(latency["p95_ms"])
    checks: list[dict[str, Any]] = [
        _check("p95_ms", p95, cfg.max_p95_ms, "max_p95_ms", "ms"),
        _check("size_mb", float(size_mb), cfg.max_size_mb, "max_size_mb", "MB"),
    ]
    champion_note = "no champion: relative bounds not applied"
    if champion is not None:
        champion_note = "champion p95 {:.3f} ms, size {:.3f} MB".format(
            float(champion.get("p95_ms", math.nan)), float(champion.get("size_mb", math.nan))
        )
        for key, ratio, unit in (
            ("p95_ms", cfg.max_p95_ratio_vs_champion, "ms"),
            ("size_mb", cfg.max_size_ratio_vs_champion, "MB"),
        ):
            base = champion.get(key)
            if ratio is None or base is None or not math.isfinite(float(base)) or float(base) <= 0:
                continue
            value = p95 if key == "p95_ms" else float(size_mb)
            rule = f"max_{key.split('_')[0]}_ratio_vs_champion"
            checks.append(_check(key, value, ratio * float(base), f"{rule} {ratio} x champion {float(base):.3f}", unit))
    failed = [c for c in checks if not c["passed"]]
    p95_bounds = [c["bound"] for c in checks if c["quantity"] == "p95_ms"]
    threshold = min(p95_bounds)
    details = {
        "latency": dict(latency),
        "size_mb": float(size_mb),
        "champion": dict(champion) if champion is not None else None,
        "checks": checks,
    }
    if failed:
        worst = max(failed, key=_overshoot)
        others = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        reason = (
            f"{worst['quantity']} {worst['value']:.3f} {worst['unit']} is over {worst['rule']} = "
            f"{worst['bound']:.3f} {worst['unit']}{others}; {champion_note}"
        )
    else:
        reason = (
            f"p95 {p95:.3f} ms <= {threshold:.3f} ms, size {float(size_mb):.3f} MB <= "
            f"{min(c['bound'] for c in checks if c['quantity'] == 'size_mb'):.3f} MB; {champion_note}"
        )
    finite_p95 = p95 if math.isfinite(p95) else None
    return GateResult(GATE, finite_p95, threshold, not failed, reason, "p95_ms", "lower_is_better", details)


def _overshoot(check: Mapping[str, Any]) -> float:
    """How far over its bound a check is (value / bound); unmeasured (NaN) counts as the worst."""
    value, bound = check["value"], check["bound"]
    return value / bound if math.isfinite(value) and bound > 0 else math.inf


def _check(quantity: str, value: float, bound: float, rule: str, unit: str) -> dict[str, Any]:
    """One bound: a NaN value fails (an unmeasured model is not fast)."""
    ok = math.isfinite(value) and value <= bound
    return {"quantity": quantity, "value": value, "bound": float(bound), "rule": rule, "unit": unit, "passed": ok}
