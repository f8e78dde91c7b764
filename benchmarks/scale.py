"""Scale benchmark (issue 7, point 5): the full pipeline on nycflights13 at 336,776 rows and ~1M rows.

    .venv/bin/python -m benchmarks.scale [--quick] [--repeats N]     # measure (writes benchmarks/results/scale.*)
    .venv/bin/python -m benchmarks.scale prepare [--copies 3] [--dest data/source/nycflights13.csv.gz]

Each measured run is `retrain run --params params.nycflights.yaml --json` in a fresh clone of the project
(temporary directory, the venv symlinked), after `prepare` wrote the dataset into the clone's data/source/.
The process tree's RSS is sampled every 0.2 s; a stage's wall time is what the flow reports for it, and its
peak RSS the highest sampled tree RSS while it ran (its interval ends at the flow's "stage X ran N s" log line).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHARED_FLIGHTS = ROOT.parent / "shared" / "datasets" / "nycflights13" / "flights.csv.gz"
"""nycflights13 from the shared datasets folder beside the checkout (`../shared`, resolved from the repo root)."""
FLIGHTS = Path(os.environ.get("NYCFLIGHTS_CSV") or SHARED_FLIGHTS)
PARAMS_FILE = "params.nycflights.yaml"
DATA_FILE = "data/source/nycflights13.csv.gz"
TARGET = "arr_status"
DELAY_MINUTES = 15
SAMPLE_SECONDS = 0.2
QUICK_ROWS = 20_000
QUICK_OVERRIDES = ("candidates.n_trials=2", "candidates.logreg.n_trials=1")
TARGET_SECONDS = {1: 300.0, 3: 900.0}
"""Wall-time targets of the issue by copies: <= 5 min on the source, <= 15 min on the ~1M-row version."""
TARGET_RSS_MB = 4096.0
STAGE_LINE = re.compile(r"stage (\w+)\s+(\w+)\s+([\d.]+)s")
PACKAGES = (
    "pandas",
    "numpy",
    "pyarrow",
    "lightgbm",
    "scikit-learn",
    "optuna",
    "mlflow",
    "prefect",
    "dvc",
    "great_expectations",
    "psutil",
)

logger = logging.getLogger("benchmarks.scale")


# --- the dataset ---------------------------------------------------------------------------------


def prepare(dest: Path, copies: int = 1, rows: int | None = None, seed: int = 42, source: Path = FLIGHTS) -> dict:
    """Write the nycflights13 CSV with the label column; `copies` > 1 appends re-timed copies (deterministic).

    Values are kept as text exactly as in the source. The label `arr_status` is `delayed` when arr_delay > 15
    min, `on_time` otherwise, empty when arr_delay is missing (cancelled or diverted; ingest drops those rows).
    Copy k >= 1 is the same schedule one year later with other outcomes (see `recast`). `rows` takes a
    seeded sample of the source first (--quick).
    """
    if not source.is_file():
        raise FileNotFoundError(
            f"nycflights13 not found at {source}: keep the shared datasets folder beside the checkout "
            "(../shared/datasets/nycflights13/flights.csv.gz) or set NYCFLIGHTS_CSV"
        )
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    if rows is not None and rows < len(frame):
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    out = pd.concat([frame if k == 0 else recast(frame, k, rng) for k in range(copies)], ignore_index=True)
    delay = pd.to_numeric(out["arr_delay"].replace("", None))
    out[TARGET] = np.where(delay.isna(), "", np.where(delay > DELAY_MINUTES, "delayed", "on_time"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(dest, "wb", compresslevel=6, mtime=0) as handle:  # mtime=0: same bytes every time
        handle.write(out.to_csv(index=False, lineterminator="\n").encode())
    labelled = out[TARGET] != ""
    info = {
        "path": str(dest),
        "copies": copies,
        "rows": len(out),
        "labelled_rows": int(labelled.sum()),
        "positive_rate": round(float((out[TARGET] == "delayed").sum() / labelled.sum()), 4),
        "bytes": dest.stat().st_size,
        "md5": hashlib.md5(dest.read_bytes()).hexdigest(),
    }
    logger.info("prepared %s", info)
    return info


OUTCOME = ("dep_delay", "arr_delay", "arr_time", "air_time")
"""What happened to a flight (vs its schedule): copies draw these from another flight of the same group."""
RECAST_GROUP = ("carrier", "origin", "month")


def recast(frame: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """Copy k of the flights: the same schedule in year + k, each departed flight given the outcome of a random
    departed flight of the same carrier, origin and month (its delays, arrival and air time, as one unit).

    The departure clock time is re-derived from the schedule (dep_time - dep_delay) and the new delay, and
    hour / minute from it. Cancelled flights (no dep_time: no schedule in this schema) stay as they are.
    Without this, a copy is its twin's label with the year changed: a model memorises twins across the CV
    folds and early stopping never stops (630 rounds instead of ~40 at x3 in a first measurement).
    """
    out = frame.copy()
    out["year"] = (out["year"].astype(int) + k).astype(str)
    departed = np.flatnonzero(out["dep_time"].to_numpy() != "")
    groups = out.iloc[departed].groupby(list(RECAST_GROUP), sort=True).indices
    donor = departed.copy()
    for key in sorted(groups):
        members = departed[groups[key]]
        donor[groups[key]] = rng.permutation(members)
    clock = pd.to_numeric(out["dep_time"].iloc[departed]).to_numpy(dtype=int)
    old = pd.to_numeric(out["dep_delay"].iloc[departed]).to_numpy(dtype=float)
    new = pd.to_numeric(frame["dep_delay"].iloc[donor]).to_numpy(dtype=float)
    scheduled = (clock // 100) * 60 + clock % 100 - old
    minutes = np.mod(scheduled + new, 1440).astype(int)
    hhmm = (minutes // 60) * 100 + minutes % 60
    hhmm = np.where(hhmm == 0, 2400, hhmm)  # the source writes midnight as 2400
    for column in OUTCOME:
        out.iloc[departed, out.columns.get_loc(column)] = frame[column].to_numpy()[donor]
    out.iloc[departed, out.columns.get_loc("dep_time")] = hhmm.astype(str)
    out.iloc[departed, out.columns.get_loc("hour")] = [f"{h:.1f}" for h in hhmm // 100]
    out.iloc[departed, out.columns.get_loc("minute")] = [f"{m:.1f}" for m in hhmm % 100]
    return out


# --- measuring one run ---------------------------------------------------------------------------


@dataclass
class RunResult:
    """One pipeline run: stage walls and peak RSS, totals, quality and gate outcome."""

    size: str
    copies: int
    rows: int
    labelled_rows: int
    exit_code: int
    wall_seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    """User + system CPU of the process tree: less sensitive than wall time to other jobs on the machine."""
    stages: list[dict[str, Any]] = field(default_factory=list)
    test_roc_auc: float | None = None
    decision: str | None = None
    failed_gates: list[str] = field(default_factory=list)
    startup_seconds: float = 0.0
    """Process start to the first stage (imports, ephemeral Prefect server, MLflow database, workspace lock)."""
    exit_seconds: float = 0.0
    """Last stage's end to process exit (dvc commit, closing runs, stopping the Prefect server)."""
    gate_seconds: dict[str, float] = field(default_factory=dict)
    gates: dict[str, dict[str, str]] = field(default_factory=dict)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)
    """1/5/15-minute load average when the run ended (other jobs on the machine inflate wall times)."""


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, period: float = SAMPLE_SECONDS) -> None:
        """Watch `pid` every `period` seconds."""
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self.cpu: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def sample(self) -> tuple[float, float] | None:
        """RSS of the tree in MB and its CPU seconds so far (user + system, with reaped children's)."""
        rss = cpu = 0.0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            cpu += times.user + times.system
            if proc is self.root:
                cpu += times.children_user + times.children_system
        return rss / 2**20, cpu

    def run(self) -> None:
        """Sample until `halt` is set."""
        while not self.halt.is_set():
            got = self.sample()
            if got is not None:
                now = time.monotonic()
                self.samples.append((now, got[0]))
                self.cpu.append((now, got[1]))
            self.halt.wait(self.period)

    def cpu_at(self, when: float) -> float:
        """Tree CPU seconds at the last sample before `when` (the total when `when` is past the end)."""
        before = [c for t, c in self.cpu if t <= when]
        return max(before) if before else 0.0

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        """Highest sample in [start, end] (the closest sample if none falls inside)."""
        inside = [mb for t, mb in self.samples if start <= t <= end]
        if inside:
            return max(inside)
        return min(self.samples, key=lambda s: abs(s[0] - end))[1] if self.samples else 0.0


def clone_project(dest: Path) -> Path:
    """A fresh copy of the committed project (git clone of HEAD), this checkout's params file, the venv linked."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    shutil.copy2(ROOT / PARAMS_FILE, dest / PARAMS_FILE)  # the working tree's version, committed or not
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def run_pipeline(project: Path, overrides: tuple[str, ...], log_path: Path) -> tuple[int, dict, TreeSampler, dict]:
    """`retrain run --params params.nycflights.yaml --json` under a tree RSS sampler; stage end times from its log."""
    home = project / ".prefect_home"  # a new Prefect home: its database is created under the clock (first run)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RETRAIN_", "DVC_"))}
    env = clean | {
        "PYTHONPATH": str(project),
        "RETRAIN_ROOT": str(project),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",  # a loaded 2-core machine starts it slowly
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [str(ROOT / ".venv" / "bin" / "retrain"), "run", "--params", PARAMS_FILE, "--json"]
    for item in overrides:
        cmd += ["--set", item]
    ends: dict[str, float] = {}
    with log_path.open("w", buffering=1) as log:  # line-buffered: tail -f works while it runs
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        out_chunks: list[str] = []
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        for line in proc.stderr:  # type: ignore[union-attr]
            log.write(line)
            match = STAGE_LINE.search(line)
            if match:
                ends.setdefault(match.group(1), time.monotonic())
        code = proc.wait()
        reader.join()
        sampler.halt.set()
        sampler.join()
    stdout = "".join(out_chunks)
    try:
        summary = json.loads(stdout[stdout.index("{") :]) if "{" in stdout else {}
    except json.JSONDecodeError:
        summary = {}
    return code, summary, sampler, ends


def measure(size: str, copies: int, rows: int | None, overrides: tuple[str, ...], work: Path) -> RunResult:
    """Clone, prepare the data the way a user would, run the flow and collect per-stage numbers."""
    work.mkdir(parents=True, exist_ok=True)
    project = clone_project(work / f"project-{size}")
    data = prepare(project / DATA_FILE, copies=copies, rows=rows)
    log_path = work / f"{size}.log"
    start = time.monotonic()
    code, summary, sampler, ends = run_pipeline(project, overrides, log_path)
    wall = time.monotonic() - start
    if code not in (0, 3):
        tail = log_path.read_text().splitlines()[-30:]
        raise RuntimeError(f"{size}: retrain run exited {code}; log {log_path}:\n" + "\n".join(tail))
    stages = []
    for stage in summary.get("stages", []):
        end = ends.get(stage["name"], float("inf"))
        stages.append(
            {
                **stage,
                "peak_rss_mb": round(sampler.peak(end - stage["seconds"], end), 1),
                "cpu_seconds": round(sampler.cpu_at(end) - sampler.cpu_at(end - stage["seconds"]), 1),
            }
        )
    record = _read_json(project / "models" / "evaluate" / "gate_record.json")
    families = _read_json(project / "models" / "candidates" / "summary.json").get("families", {})
    first = ends.get("ingest", start) - (stages[0]["seconds"] if stages else 0.0)
    last = max(ends.values(), default=start)
    result = RunResult(
        size=size,
        copies=copies,
        rows=data["rows"],
        labelled_rows=data["labelled_rows"],
        exit_code=code,
        wall_seconds=round(wall, 2),
        peak_rss_mb=round(sampler.peak(), 1),
        cpu_seconds=round(sampler.cpu_at(float("inf")), 1),
        stages=stages,
        test_roc_auc=_test_metric(summary),
        decision=summary.get("decision"),
        failed_gates=list(summary.get("failed_gates", [])),
        startup_seconds=round(first - start, 2),
        exit_seconds=round(start + wall - last, 2),
        gate_seconds=record.get("gate_seconds", {}),
        gates={g["name"]: {"status": g["status"], "reason": g["reason"]} for g in record.get("gates", [])},
        load_average=[round(x, 1) for x in os.getloadavg()],
        families={
            f: {k: v[k] for k in ("n_trials", "n_pruned", "cv_score", "valid_score") if k in v}
            for f, v in families.items()
        },
    )
    logger.info("%s: %s", size, json.dumps(asdict(result), default=str))
    return result


def _read_json(path: Path) -> dict:
    """A JSON output of the run, {} when the stage did not write it."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _test_metric(summary: dict) -> float | None:
    """Test ROC AUC of the selected candidate, from the evaluate stage's metrics."""
    metrics = summary.get("metrics", {}).get("evaluate", {})
    for key in ("test_roc_auc", "roc_auc"):
        if key in metrics:
            return round(float(metrics[key]), 4)
    return None


# --- reporting -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def median(values: list[float]) -> float:
    """Median of repeats (a single repeat is its own median)."""
    return float(statistics.median(values))


def _ratio(values: list[float]) -> str:
    """Larger size over smaller, as `x2.95` (or `-` with one size)."""
    return f"x{values[-1] / values[0]:.2f}" if len(values) == 2 and values[0] > 0 else "-"


def markdown(results: list[RunResult], quick: bool, note: str = "") -> str:
    """The `## Scale` section: totals vs targets, the growth ratio, then per-stage wall, CPU and peak RSS."""
    sizes = [size for _, size in sorted({(r.copies, r.size) for r in results})]
    by_size = {size: [r for r in results if r.size == size] for size in sizes}
    title = "## Scale: nycflights13, full pipeline" + (" (--quick: NOT the real measurement)" if quick else "")
    lines = [title, ""]
    lines += [
        "| rows in file / labelled | wall s | target | CPU s | peak RSS MB | target | test ROC AUC | decision | "
        "verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    walls, cpus, rows = [], [], []
    for size in sizes:
        runs = by_size[size]
        wall = median([r.wall_seconds for r in runs])
        cpu = median([r.cpu_seconds for r in runs])
        rss = median([r.peak_rss_mb for r in runs])
        walls.append(wall)
        cpus.append(cpu)
        rows.append(runs[0].labelled_rows)
        target = TARGET_SECONDS.get(runs[0].copies, float("nan"))
        ok = wall <= target and rss <= TARGET_RSS_MB
        auc = runs[0].test_roc_auc
        lines.append(
            f"| {runs[0].rows:,} / {runs[0].labelled_rows:,} | {wall:.0f} | <= {target:.0f} | {cpu:.0f} | {rss:,.0f} | "
            f"<= {TARGET_RSS_MB:,.0f} | {f'{auc:.4f}' if auc is not None else '-'} | {runs[0].decision} | "
            f"{'PASS' if ok else 'MISS'} |"
        )
    if len(sizes) == 2:
        rows_ratio = rows[1] / rows[0]
        linear = walls[1] / walls[0] <= rows_ratio * 1.2
        lines.append(
            f"| growth for rows x{rows_ratio:.2f} | {_ratio(walls)} | about linear (<= x{rows_ratio * 1.2:.1f}) | "
            f"{_ratio(cpus)} | | | | | {'PASS' if linear else 'MISS'} |"
        )
    head = " | ".join(f"{s} wall s | {s} CPU s | {s} peak RSS MB" for s in sizes)
    lines += ["", f"| stage | {head} | wall ratio | CPU ratio |", "|---" * (3 * len(sizes) + 3) + "|"]
    for name in [s["name"] for s in by_size[sizes[0]][0].stages]:
        cells, secs, cpu_secs = [], [], []
        for size in sizes:
            found = [s for r in by_size[size] for s in r.stages if s["name"] == name]
            sec = median([s["seconds"] for s in found]) if found else float("nan")
            cpu = median([s.get("cpu_seconds", float("nan")) for s in found]) if found else float("nan")
            rss = median([s["peak_rss_mb"] for s in found]) if found else float("nan")
            secs.append(sec)
            cpu_secs.append(cpu)
            cells.append(f"{sec:.1f} | {cpu:.1f} | {rss:,.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_ratio(secs)} | {_ratio(cpu_secs)} |")
    phases = (("(startup: imports, Prefect server, MLflow db)", "startup_seconds"), ("(exit)", "exit_seconds"))
    for label, attr in phases:
        secs = [median([getattr(r, attr) for r in by_size[size]]) for size in sizes]
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f} | - | -" for v in secs) + f" | {_ratio(secs)} | - |")
    outside = [
        median([r.cpu_seconds - sum(s.get("cpu_seconds", 0.0) for s in r.stages) for r in by_size[size]])
        for size in sizes
    ]
    lines.append(
        "| (CPU outside stages: startup + exit) | "
        + " | ".join(f"- | {v:.1f} | -" for v in outside)
        + f" | - | {_ratio(outside)} |"
    )
    loads = [r.load_average[0] for r in results if r.load_average]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "unknown"
    share = ", ".join(f"{r.size} {r.cpu_seconds / r.wall_seconds:.2f}" for r in results if r.wall_seconds)
    lines += [
        "",
        "Measured by `python -m benchmarks.scale`: `retrain run --params params.nycflights.yaml` in a fresh clone",
        "per run, after `benchmarks.scale prepare` wrote the data (x3: the schedule 3 times, copies re-timed with",
        "other flights' outcomes, see docs/scale.md). Wall = the whole",
        "command, process start to exit; stage wall = what the flow reports; CPU = user + system seconds of the",
        "process tree; peak RSS = summed RSS of the process tree sampled every 0.2 s (a stage: within its interval).",
        f"Medians of repeats; sizes interleaved when run together. 1-min load average {load} at the end of the runs",
        f"({os.cpu_count()} CPUs; above ~1 per CPU, wall times are inflated by other jobs and CPU seconds much less",
        f"so; CPU s / wall s: {share}). See docs/scale.md.",
        *([note] if note else []),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """`prepare` writes the data into a project; no command runs the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    prep = sub.add_parser("prepare", help="write the labelled nycflights13 CSV into a project")
    prep.add_argument("--dest", type=Path, default=ROOT / DATA_FILE)
    prep.add_argument("--copies", type=int, default=1, help="3: the ~1M-row version (year-shifted copies)")
    prep.add_argument("--rows", type=int, default=None, help="a seeded sample of the source first")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} source rows and 2 trials (smoke test)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (sizes interleaved)")
    parser.add_argument("--sizes", default="1,3", help="copies to run, comma-separated (default 1,3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects (for profiling)")
    parser.add_argument("--out", default="scale", help="results file stem under benchmarks/results/")
    parser.add_argument("--note", default="", help="a line appended to the Markdown section")
    parser.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        help="also report the runs of an earlier results JSON (or one run's JSON); e.g. sizes measured separately",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Prepare, or run every size `repeats` times (interleaved) and write the JSON and Markdown results."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.command == "prepare":
        prepare(args.dest, copies=args.copies, rows=args.rows)
        return 0
    rows = QUICK_ROWS if args.quick else None
    overrides = QUICK_OVERRIDES if args.quick else ()
    copies_list = [int(c) for c in args.sizes.split(",") if c]  # "": only --include
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    results: list[RunResult] = []
    try:
        for repeat in range(args.repeats):
            for copies in copies_list:
                size = f"x{copies}"
                logger.info("repeat %d, size %s: running", repeat + 1, size)
                results.append(measure(size, copies, rows, overrides, work / f"r{repeat}"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            logger.info("kept %s", work)
    for path in args.include:
        earlier = json.loads(path.read_text())
        for run in earlier.get("runs", [earlier]):
            results.append(RunResult(**run))
    table = markdown(results, args.quick, args.note)
    sys.stdout.write(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {
        "included": [str(p) for p in args.include],
        "quick": args.quick,
        "repeats": args.repeats,
        "sizes": copies_list,
        "source_rows": rows,
        "overrides": list(overrides),
        "params_file": PARAMS_FILE,
        "params": (ROOT / PARAMS_FILE).read_text(),
    }
    payload = {"benchmark": "scale", "settings": settings, "machine": info, "runs": [asdict(r) for r in results]}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS / f"{args.out}.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
