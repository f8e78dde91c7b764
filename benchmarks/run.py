"""Run every benchmark, each in its own process, then collect their sections into benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks.run [--quick] [--only stages,caching] [--repeats N]   (`make bench`)

Order: stages, caching, tuning, inference, scale, own_table. A module that does not exist yet is skipped with a
warning; a benchmark that fails is reported and the others still run (exit 1 at the end). RESULTS.md is
a header naming the machine, commit and date, then benchmarks/results/<name>.md of every benchmark in that
order (sections of benchmarks not run this time are kept from their last run, and say when that was).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import time

from benchmarks._runs import RESULTS, ROOT, machine_info, machine_line, pinned_commit, setup_logging

logger = logging.getLogger("benchmarks.run")

ORDER = ("stages", "caching", "tuning", "refit", "inference", "serve_model", "scale", "own_table")
COLLECTED = ("serve_model_champion", "catboost", "monotone_cost", "tuning_adult_quiet")
"""Sections collected into RESULTS.md but run by hand: serve_model on a registered champion
(`--model adult-income@champion --results-name serve_model_champion`), catboost (needs a package outside the lock),
monotone_cost (what California's monotone constraint costs against the tuning peers), tuning_adult_quiet (Adult
only at 30 s and the cold run's wall, on an otherwise idle machine: `--datasets adult --budgets 30 --cold-budget 65
--results-name tuning_adult_quiet`)."""
OUTPUT = ROOT / "benchmarks" / "RESULTS.md"


def available(name: str) -> bool:
    """Whether benchmarks/<name>.py exists."""
    return importlib.util.find_spec(f"benchmarks.{name}") is not None


def run_one(name: str, quick: bool, repeats: int | None) -> tuple[int, float]:
    """`python -m benchmarks.<name>` in its own process; its exit code and wall seconds."""
    command = [sys.executable, "-m", f"benchmarks.{name}"]
    if quick:
        command.append("--quick")
    if repeats is not None:
        command += ["--repeats", str(repeats)]
    logger.info("running %s", " ".join(command[1:]))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=False)
    return done.returncode, time.perf_counter() - started


def section_date(name: str) -> str | None:
    """When a benchmark's results were written (its JSON's machine date), if it has results."""
    path = RESULTS / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    machine = data.get("machine") or {}
    return machine.get("date") or machine.get("date_utc")


def collect(names: tuple[str, ...], ran: dict[str, int]) -> str:
    """RESULTS.md: the header, then each benchmark's section in order."""
    info = machine_info()
    parts = [
        "# Benchmark results",
        "",
        f"Collected by `make bench` (`python -m benchmarks.run`) on {machine_line(info)}. Each section below "
        "names its own run, commit and machine load (absolute times are trustworthy on a quiet machine; on a "
        "shared one, the ratios from side-by-side runs). Raw numbers: benchmarks/results/<name>.json.",
        "",
    ]
    for name in names:
        md = RESULTS / f"{name}.md"
        if not md.exists():
            parts += [f"## {name}", "", "_No results yet._", ""]
            continue
        text = md.read_text().rstrip()
        if name not in ran:
            text += f"\n\n_(Not re-run by this `make bench`; results from {section_date(name) or 'an earlier run'}.)_"
        elif ran[name] != 0:
            text += f"\n\n_(The last run of this benchmark FAILED with exit {ran[name]}; these are older results.)_"
        parts += [text, ""]
    return "\n".join(parts).rstrip() + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings (< 2 min each): smoke-test the code")
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="passed to every benchmark")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild RESULTS.md from results/*.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks in order, then write RESULTS.md."""
    args = parse_args(argv)
    setup_logging()
    selected = tuple(n.strip() for n in args.only.split(",") if n.strip()) or ORDER
    unknown = [n for n in selected if n not in ORDER]
    if unknown:
        logger.error("unknown benchmark(s) %s; choose from %s", unknown, ", ".join(ORDER))
        return 2
    logger.info("every benchmark measures commit %s", pinned_commit())  # exported as $BENCH_COMMIT to each
    ran: dict[str, int] = {}
    for name in (n for n in ORDER if n in selected and not args.collect_only):
        if not available(name):
            logger.warning("benchmarks/%s.py does not exist yet: skipped", name)
            continue
        code, seconds = run_one(name, args.quick, args.repeats)
        ran[name] = code
        logger.info("%s finished with exit %d in %.0f s", name, code, seconds)
    OUTPUT.write_text(collect(ORDER + COLLECTED, ran))
    sys.stdout.write(f"wrote {OUTPUT.relative_to(ROOT)}\n")
    failed = {n: c for n, c in ran.items() if c != 0}
    if failed:
        logger.error("failed: %s", failed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
