"""What the California config's monotone constraint costs in the tuning comparison (issue 18, peers).

`python -m benchmarks.monotone_cost [--budgets 30 90] [--repeats 1] [--quick]`. The tuning benchmark's "ours"
(`benchmarks.tuning.run_ours`: the candidates stage's LightGBM search with `timeout_seconds` = budget, then the
train + valid refit, scored on test) on California, twice per budget and repeat: as params.california.yaml
configures it (`candidates.monotone: {median_income: 1}`, which its directional gate expects: unconstrained
LightGBM raised the score on fewer rows than it should for 6.5 % of them, over the gate's 5 %) and with the
constraint removed, as FLAML and AutoGluon fit. The difference is what our gate-passing config pays against peers
whose models are not held to that gate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from typing import Any

from benchmarks._runs import load_note, machine_info, machine_line, markdown_table, setup_logging, write_results
from benchmarks.tuning import Data, prepare, run_ours


def unconstrained(data: Data) -> Data:
    """The same rows and params with `candidates.monotone` emptied."""
    candidates = data.params.candidates.model_copy(update={"monotone": {}})
    return dataclasses.replace(data, params=data.params.model_copy(update={"candidates": candidates}))


def render(out: dict[str, Any]) -> str:
    """The section: medians per budget, constrained vs free, and the load."""
    rows = []
    for budget in out["budgets"]:
        cells = [c for c in out["cells"] if c["budget"] == budget]
        mono = statistics.median(c["monotone"]["test"] for c in cells)
        free = statistics.median(c["free"]["test"] for c in cells)
        rows.append([f"{budget:g} s", f"{mono:.4f}", f"{free:.4f}", f"{free - mono:+.4f}", len(cells)])
    table = markdown_table(["budget", "ours, monotone (config)", "ours, unconstrained", "cost", "repeats"], rows)
    load = f"load {out['load_start'][0]:.1f} at the start, {out['load_end'][0]:.1f} at the end"
    return (
        "## California: what the monotone constraint costs in the tuning comparison\n\n"
        f"{machine_line(out['machine'])}; {load} ({load_note(out['load_end'][0], os.cpu_count())}).\n\n"
        f"{table}\n\n"
        "Test R² of the tuning benchmark's `ours` on California with params.california.yaml's "
        "`candidates.monotone: {median_income: 1}` (its directional gate's expectation) and without it, as the "
        "peers fit. `python -m benchmarks.monotone_cost`.\n"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the pairs, write benchmarks/results/monotone_cost.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[30.0, 90.0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 s budget on 3,000 sampled rows: a smoke test")
    args = parser.parse_args(argv)
    setup_logging()
    load_start = os.getloadavg()
    data = prepare("california", "params.california.yaml", 3000 if args.quick else None)
    free = unconstrained(data)
    budgets = [3.0] if args.quick else args.budgets
    cells = []
    for repeat in range(args.repeats):
        seed = data.params.seed + repeat
        for budget in budgets:
            pair = {"monotone": run_ours(data, budget, seed), "free": run_ours(free, budget, seed)}
            cells.append({"budget": budget, "seed": seed, **pair})
    out = {
        "machine": machine_info(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "budgets": budgets,
        "cells": cells,
        "quick": args.quick,
    }
    write_results("monotone_cost", out, render(out))
    return out


if __name__ == "__main__":
    main()
