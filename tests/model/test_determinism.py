"""Given the same data, params and code, the candidates logic writes byte-identical model files (LightGBM
text, skops archives, the stacking directory) and identical metrics."""

from __future__ import annotations

from pathlib import Path

from tasks.candidates import fit_family, fit_stacking, save_family
from tests.unit.test_stacking import config, design

FAMILIES = ("lightgbm", "hgb", "logreg")


def train_all(root: Path) -> dict[str, dict]:
    """Tune, refit and save every family plus stacking under root; the summaries without wall-clock fields."""
    d = design("binary")
    cfg = config((*FAMILIES, "stacking"))
    bases = {f: fit_family(f, d, cfg) for f in FAMILIES}
    for family, outcome in bases.items():
        save_family(outcome, family, d, root / family)
    outcomes = {**bases, "stacking": fit_stacking(bases, d, cfg, root / "stacking")}
    timings = ("tuning_seconds", "fit_seconds", "predict_rows_per_second")
    return {f: {k: v for k, v in o.summary().items() if k not in timings} for f, o in outcomes.items()}


def test_two_runs_write_identical_bytes(tmp_path: Path) -> None:
    first, second = train_all(tmp_path / "one"), train_all(tmp_path / "two")
    assert first == second, "identical CV / valid scores and best params"
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert {p.suffix for p in files} >= {".txt", ".skops", ".json"}, f"every format is covered: {files}"
    assert any(p.parts[0] == "stacking" and len(p.parts) == 3 for p in files), "stacking holds its base models"
    for rel in files:
        a, b = (tmp_path / "one" / rel).read_bytes(), (tmp_path / "two" / rel).read_bytes()
        assert a == b, f"{rel} differs between two identical runs"
    again = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert again == files, "the same set of files"
