"""Bring your own table: `retrain init` + `retrain run` on tables with no hand-written params, vs hand-written ones.

    .venv/bin/python -m benchmarks.own_table [--quick] [--only adult,wine]

Per table, in a fresh clone of the pinned commit: `retrain init DATA --target COL [--protected ...]`, then
`retrain check`, then `retrain run --json` on the generated file; where the project ships a hand-written params
file for the same table (Adult: params.yaml, California: params.california.yaml), that file is run in another
fresh clone, side by side. Reported: the decision, whether `champion` was set, the shipped family, the test
metric, the wall time, and the difference to the hand-written file's test metric (target: within 0.003).

Adult's hand-written file tests on UCI's separate adult.test file; the generated one has only the path, so
its test split is carved from adult.data: the two test metrics are on different rows (the table says so).
`--quick` samples 3,000 rows and 2 trials per family: a smoke test of the code, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._runs import (
    RESULTS,
    machine_info,
    machine_line,
    markdown_table,
    pinned_commit,
    project_env,
    remove_project,
    run_monitored,
    setup_logging,
    temp_project,
    write_results,
)

logger = logging.getLogger("benchmarks.own_table")


@dataclass(frozen=True)
class Table:
    """A table as a new user would point retrain at it."""

    name: str
    data: str
    target: str
    init_args: tuple[str, ...] = ()
    hand_written: str | None = None


TABLES = (
    Table("adult", "data/source/adult_train.csv.gz", "income", ("--protected", "sex", "race"), "params.yaml"),
    Table("california", "data/source/california_housing.csv.gz", "median_house_value", (), "params.california.yaml"),
    Table("wine", "wine.csv", "target"),
)
"""Adult (binary), California housing (regression), scikit-learn's bundled wine (multiclass)."""

QUICK = ("--set", "ingest.sample_rows=3000", "--set", "candidates.n_trials=2")


def write_wine(project: Path) -> None:
    """scikit-learn's bundled wine table (no download) as a CSV, the way a user would have it."""
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(project / "wine.csv", index=False)


def run_json(project: Path, *args: str) -> tuple[dict[str, Any], float, int]:
    """`retrain <args> --json` in the project: its summary, wall seconds and exit code.

    subprocess.run, not run_monitored: it waits for stdout to close (the ephemeral Prefect server, a child,
    holds it until it stops), so the summary line is never cut off.
    """
    started = time.perf_counter()
    done = subprocess.run(
        [str(project / ".venv" / "bin" / "retrain"), *args, "--json"],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    try:
        summary = json.loads(done.stdout)
    except (ValueError, IndexError):
        tail = "\n".join(done.stderr.splitlines()[-40:])
        raise RuntimeError(f"retrain {' '.join(args)} exited {done.returncode} with no summary:\n{tail}") from None
    return summary, wall, done.returncode


def outcome(summary: dict[str, Any], wall: float, code: int) -> dict[str, Any]:
    """What the table reports of one run."""
    metrics = (summary.get("metrics") or {}).get("evaluate") or {}
    metric = summary.get("metric")
    test = metrics.get(f"test_{metric}") if metric else None
    return {
        "exit": code,
        "decision": summary.get("decision"),
        "promotion": summary.get("promotion"),
        "champion_version": summary.get("champion_version"),
        "family": summary.get("family") or (summary.get("selection") or {}).get("chosen"),
        "metric": metric,
        "test": test,
        "wall_s": round(wall, 1),
        "failed_gates": summary.get("failed_gates"),
    }


def measure(table: Table, quick: bool) -> dict[str, Any]:
    """init + check + run on the table, and the hand-written params file side by side."""
    extra = QUICK if quick else ()
    result: dict[str, Any] = {"table": table.name, "commit": pinned_commit()}
    project = temp_project(f"own-{table.name}")
    try:
        if table.name == "wine":
            write_wine(project)
        output = f"params.{table.name}-init.yaml"
        init = run_monitored(
            [
                str(project / ".venv" / "bin" / "retrain"),
                "init",
                table.data,
                "--target",
                table.target,
                *table.init_args,
                "--output",
                output,
            ],
            project,
            project_env(project),
        )
        result["init_s"] = round(init.wall, 1)
        check = run_monitored(
            [str(project / ".venv" / "bin" / "retrain"), "check", "--params", output], project, project_env(project)
        )
        result["check_s"] = round(check.wall, 1)
        result["generated"] = (project / output).read_text()
        result["init"] = outcome(*run_json(project, "run", "--params", output, *extra))
    finally:
        remove_project(project)
    if table.hand_written:
        project = temp_project(f"hand-{table.name}")
        try:
            result["hand"] = outcome(*run_json(project, "run", "--params", table.hand_written, *extra))
        finally:
            remove_project(project)
    return result


def markdown(results: list[dict[str, Any]], info: dict[str, Any], quick: bool) -> str:
    """The section for RESULTS.md."""
    rows = []
    for r in results:
        init, hand = r["init"], r.get("hand")
        delta = (
            (init["test"] - hand["test"]) if hand and init["test"] is not None and hand["test"] is not None else None
        )
        rows.append(
            [
                r["table"],
                f"{init['decision']} / {init['promotion']}",
                "yes" if init["champion_version"] else "no",
                init["family"],
                f"{init['metric']} {init['test']:.4f}" if init["test"] is not None else "-",
                f"{hand['test']:.4f}" if hand and hand["test"] is not None else "-",
                f"{delta:+.4f}" if delta is not None else "-",
                f"{r['init_s']} / {r['check_s']} / {init['wall_s']}",
                str(r.get("commit", "?"))[:8],
            ]
        )
    table = markdown_table(
        [
            "table",
            "decision",
            "champion",
            "family",
            "test (init)",
            "test (hand-written)",
            "Δ",
            "init / check / run s",
            "commit",
        ],
        rows,
    )
    note = "**Quick smoke test (sampled rows, 2 trials): not a measurement.**\n\n" if quick else ""
    return (
        "## own_table: `retrain init` + `retrain run` with only path and target\n\n"
        f"{note}{machine_line(info)}. Each run in a fresh clone; the hand-written file (params.yaml, "
        "params.california.yaml) in another, side by side. Target: a champion on the first run, test metric "
        "within 0.003 of the hand-written file. Adult's hand-written file tests on adult.test; the generated "
        "one carves its test split from adult.data (different rows).\n\n"
        f"{table}\n"
    )


def merged(fresh: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    """With --only, the other tables' rows of the last run of the same kind are kept (each row says its commit)."""
    previous = RESULTS / "own_table.json"
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return fresh
    if old.get("quick") != quick:
        return fresh
    names = {r["table"] for r in fresh}
    commit = (old.get("machine") or {}).get("git_commit")
    kept = [{"commit": commit, **r} for r in old.get("results", []) if r["table"] not in names]
    order = [t.name for t in TABLES]
    return sorted([*kept, *fresh], key=lambda r: order.index(r["table"]) if r["table"] in order else len(order))


def main(argv: list[str] | None = None) -> int:
    """Measure every table (or --only some) and write benchmarks/results/own_table.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated table names")
    parser.add_argument("--repeats", type=int, default=1, help="accepted for `make bench`; one run per table")
    args = parser.parse_args(argv)
    setup_logging()
    chosen = [t for t in TABLES if args.only is None or t.name in args.only.split(",")]
    info = machine_info()
    results = merged([measure(t, args.quick) for t in chosen], args.quick)
    write_results(
        "own_table", {"machine": info, "quick": args.quick, "results": results}, markdown(results, info, args.quick)
    )
    return 0 if all(r["init"]["champion_version"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
