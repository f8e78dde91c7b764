"""Single-row latency, model size and the latency/size gate: bounds, champion ratios, reasons."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from retrain.config import LatencyGate
from retrain.evaluation.latency import WARMUP_CALLS, directory_size_mb, latency_gate, single_row_latency_ms


def test_single_row_latency_times_one_row_per_call() -> None:
    X = pd.DataFrame({"a": range(7), "b": list("abcdefg")})
    seen: list[int] = []

    def predict(frame: pd.DataFrame) -> None:
        seen.append(len(frame))
        time.sleep(0.002)

    stats = single_row_latency_ms(predict, X, rows=20)
    assert set(seen) == {1}, "every call gets a single-row DataFrame"
    assert len(seen) == 20 + WARMUP_CALLS, "rows timed calls after the warm-up"
    assert set(stats) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "rows"}
    assert 2.0 <= stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"], f"2 ms sleeps measured as {stats}"
    with pytest.raises(ValueError, match="at least one row"):
        single_row_latency_ms(predict, X.head(0), rows=5)


def test_directory_size_mb(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 400_000)
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 100_000)
    assert directory_size_mb(tmp_path) == pytest.approx(0.5), "sizes are summed recursively, in 10^6 bytes"
    assert directory_size_mb(tmp_path / "a.bin") == pytest.approx(0.4)
    with pytest.raises(FileNotFoundError):
        directory_size_mb(tmp_path / "missing")


LATENCY = {"p50_ms": 0.5, "p95_ms": 0.9, "p99_ms": 1.5, "mean_ms": 0.6, "rows": 200}


def test_latency_gate_absolute_bounds() -> None:
    ok = latency_gate(LATENCY, 2.0, cfg=LatencyGate(max_p95_ms=5, max_size_mb=10), champion=None)
    assert ok.passed and ok.value == 0.9 and ok.threshold == 5, ok
    assert "no champion" in ok.reason, ok.reason
    slow = latency_gate(LATENCY, 2.0, cfg=LatencyGate(max_p95_ms=0.5, max_size_mb=10), champion=None)
    assert not slow.passed, "p95 0.9 ms over 0.5 ms fails"
    assert "p95_ms 0.900 ms" in slow.reason and "max_p95_ms = 0.500" in slow.reason, slow.reason
    big = latency_gate(LATENCY, 20.0, cfg=LatencyGate(max_p95_ms=5, max_size_mb=10), champion=None)
    assert not big.passed and "size_mb 20.000 MB" in big.reason, big.reason
    both = latency_gate(LATENCY, 40.0, cfg=LatencyGate(max_p95_ms=0.8, max_size_mb=10), champion=None)
    assert "size_mb" in both.reason and "+1 more" in both.reason, f"the worst offender (4x size) first: {both.reason}"


def test_latency_gate_relative_to_champion() -> None:
    cfg = LatencyGate(max_p95_ms=50, max_size_mb=100, max_p95_ratio_vs_champion=1.5, max_size_ratio_vs_champion=2)
    champion = {"p95_ms": 0.5, "size_mb": 1.0}
    slower = latency_gate(LATENCY, 1.5, cfg=cfg, champion=champion)
    assert not slower.passed, "0.9 ms > 1.5 x champion 0.5 ms"
    assert slower.threshold == pytest.approx(0.75), "threshold is the tightest p95 bound"
    assert "champion" in slower.reason and "0.750" in slower.reason, slower.reason
    fine = latency_gate(LATENCY, 1.5, cfg=cfg, champion={"p95_ms": 1.0, "size_mb": 1.0})
    assert fine.passed, fine.reason
    no_ratio = latency_gate(LATENCY, 1.5, cfg=LatencyGate(), champion=champion)
    assert no_ratio.passed, "without ratios configured the champion only informs the reason"
    off = latency_gate(LATENCY, 1.5, cfg=LatencyGate(enabled=False), champion=champion)
    assert off.skipped and off.passed, "a disabled gate is skipped"
    nan = latency_gate({**LATENCY, "p95_ms": float("nan")}, 1.0, cfg=LatencyGate(), champion=None)
    assert not nan.passed and nan.value is None, "an unmeasured latency fails"
