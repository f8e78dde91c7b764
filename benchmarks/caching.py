"""Caching: an unchanged rerun, an unchanged `dvc repro`, and what a one-key params change re-runs (issue 7, point 2).

    .venv/bin/python -m benchmarks.caching [--quick] [--repeats 5]

Two fresh temp clones, each brought to a finished state by a cold `retrain run` (not timed): F (driven by
`retrain run`) and D (driven by `dvc repro`; one untimed `dvc repro` first). Then, interleaved:
(a) `retrain run --json` with nothing changed in F, beside `retrain --help` and `python -c "import flows.cli"`
(process start: interpreter + CLI import); target: rerun wall - process start <= 3 s. Each repeat runs it twice:
on Prefect's ephemeral server (the default: no PREFECT_API_URL, so every run starts one) and against a
persistent `prefect server start` on 127.0.0.1 (what `make servers` gives), and times the library floor: a
process that only imports Prefect, MLflow with its SQLAlchemy store and DVC's repo, which every run needs;
(b) `dvc repro` with nothing changed in D; target <= 3 s. (a) runs with `--force`: without it an unchanged
`retrain run` is a no-op (engine/noop.py), measured as (n) right before (b): wall, and wall / dvc repro's wall
of the same repeat (issue 18: <= 1.5 s and <= 1.5 x), then the recorded no-op (trigger schedule against the
persistent server, as a deployment's flow-run process runs it: a flow run in state Unchanged; <= 3 s).
(c) One key of params.yaml changed at a time, cumulatively (a gate threshold of evaluate, then
candidates.n_trials, then split.valid_size), in both projects: F re-runs `retrain run` (stages ran / cached
from its summary), D re-runs `dvc repro` (stages from DVC's "Running stage" lines). PASS when the stages that
ran are exactly the expected set, computed from the DAG in engine/stage.py: the stages that read the key,
then every stage whose inputs are outputs of a stage in the set; the flow also runs `promote` every time
(never cached, by design), DVC only when its input changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmarks._runs import (
    RESULTS,
    background_server,
    free_port,
    load_note,
    machine_info,
    machine_line,
    markdown_table,
    median,
    project_env,
    remove_project,
    run_monitored,
    setup_logging,
    status,
    temp_project,
    write_results,
)

logger = logging.getLogger("benchmarks.caching")

NAME = "caching"
TARGET_SECONDS = 3.0
NOOP_TARGET_SECONDS, NOOP_TARGET_RATIO, RECORDED_TARGET_SECONDS = 1.5, 1.5, 3.0
"""Issue 18: a no-op `retrain run` <= 1.5 s and <= 1.5 x `dvc repro`; a recorded (scheduled) no-op <= 3 s."""
QUICK_PARAMS = {"ingest.sample_rows": 3000, "candidates.n_trials": 2}
"""--quick: set in the projects' params.yaml before the cold runs (a smoke test of the code)."""
CHANGES = (
    ("evaluate gate threshold", "evaluate.gates.fairness.max_demographic_parity_difference", 0.21),
    ("candidates trials", "candidates.n_trials", None),  # None: the current value - 2 (quick: + 1)
    ("split", "split.valid_size", 0.25),
)
DVC_RAN = re.compile(r"Running stage '([\w-]+)'")
DVC_SKIPPED = re.compile(r"Stage '([\w-]+)' didn't change, skipping")


def expected_stages(key: str, flow: bool) -> list[str]:
    """Stages a change of `key` must re-run, from the DAG table (engine/stage.py) alone."""
    from flows.dag import DAG as STAGES

    def reads(stage_params: tuple[str, ...]) -> bool:
        """The stage reads the key, or a section or parent of it."""
        return any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in stage_params)

    def consumes(deps: tuple[str, ...], outs: set[str]) -> bool:
        """One of the deps is (inside) an output of a stage already in the set."""
        return any(dep == out or dep.startswith(out + "/") for dep in deps for out in outs)

    ran = {s.name for s in STAGES if reads(s.params)}
    changed = True
    while changed:
        outs = {out for s in STAGES if s.name in ran for out in s.outs}
        new = {s.name for s in STAGES if s.name not in ran and consumes(s.deps, outs)}
        ran |= new
        changed = bool(new)
    if flow:
        ran |= {s.name for s in STAGES if not s.cache}
    return [s.name for s in STAGES if s.name in ran]


def set_param(project: Path, key: str, value: Any) -> Any:
    """Change one key of the project's params.yaml (as a user edits it); returns the old value."""
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    old = node[last]
    node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return old


def get_param(project: Path, key: str) -> Any:
    """One key of the project's params.yaml."""
    node = yaml.safe_load((project / "params.yaml").read_text())
    for part in key.split("."):
        node = node[part]
    return node


LIBRARY_FLOOR = "import prefect, mlflow, dvc.repo; from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore"
"""What any `retrain run` imports before it can do anything (Prefect, MLflow's SQLite store, DVC)."""


def retrain_run(
    project: Path, api_url: str | None = None, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`retrain run --json ARGS` in the project: wall, in-flow seconds, each stage's status (an error is recorded).

    With `api_url` the run reports to that Prefect server instead of starting an ephemeral one.
    """
    env = project_env(project) | ({"PREFECT_API_URL": api_url} if api_url else {}) | (env or {})
    done = run_monitored([str(project / ".venv/bin/retrain"), "run", "--json", *args], project, env, check=False)
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        logger.error("retrain run exited %d without a summary: %s", done.returncode, done.stderr[-2000:])
        return {"wall": round(done.wall, 3), "returncode": done.returncode, "error": done.stderr[-2000:], "stages": {}}
    return {
        "wall": round(done.wall, 3),
        "cpu_seconds": done.cpu_seconds,
        "returncode": done.returncode,
        "in_flow_seconds": summary["seconds"],
        "stages": {s["name"]: s["status"] for s in summary["stages"]},
        "stage_seconds": {s["name"]: s["seconds"] for s in summary["stages"]},
        "decision": summary.get("decision"),
        "promotion": summary.get("promotion"),
        "noop": bool(summary.get("noop")),
    }


RECORDED_NOOP = (
    "from flows.training import retrain_flow; "
    "state = retrain_flow(trigger='schedule', return_state=True); print(state.name)"
)
"""What the flow-run process of a `retrain-scheduled` deployment run does: load the entrypoint, run the flow."""


def recorded_noop(project: Path, api_url: str) -> dict[str, Any]:
    """A scheduled run with nothing changed, as the deployment's flow-run process runs it: wall and final state."""
    env = project_env(project) | {"PREFECT_API_URL": api_url}
    python = str(project / ".venv/bin/python")
    done = run_monitored([python, "-c", RECORDED_NOOP], project, env, check=False)
    state = (done.stdout.strip().splitlines() or [""])[-1]
    if state != "Unchanged":
        logger.warning("recorded no-op ended %r (exit %d): %s", state, done.returncode, done.stderr[-1500:])
    return {"wall": round(done.wall, 3), "returncode": done.returncode, "state": state, "noop": state == "Unchanged"}


def dvc_repro(project: Path) -> dict[str, Any]:
    """`dvc repro` in the project: wall, the stages DVC ran and skipped, exit code (3 from promote: rejected)."""
    done = run_monitored([str(project / ".venv/bin/dvc"), "repro"], project, project_env(project), check=False)
    text = done.stdout + "\n" + done.stderr
    if done.returncode != 0:
        logger.warning("dvc repro exited %d: %s", done.returncode, text[-1500:])
    return {
        "wall": round(done.wall, 3),
        "cpu_seconds": done.cpu_seconds,
        "returncode": done.returncode,
        "ran": DVC_RAN.findall(text),
        "skipped": DVC_SKIPPED.findall(text),
        "tail": text[-1500:] if done.returncode != 0 else "",
    }


def timed(command: list[str], project: Path) -> float:
    """Wall seconds of a short command in the project."""
    return round(run_monitored(command, project, project_env(project)).wall, 3)


def prepare(prefix: str, quick: bool) -> tuple[Path, dict[str, Any]]:
    """A fresh clone brought to a finished state by one cold `retrain run` (its wall is recorded, not judged)."""
    project = temp_project(prefix)
    for key, value in (QUICK_PARAMS if quick else {}).items():
        set_param(project, key, value)
    logger.info("%s: cold retrain run", project)
    return project, retrain_run(project)


def measure(repeats: int, quick: bool) -> dict[str, Any]:
    """Setup, then (a) and (b) interleaved, then (c) in both projects."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # setup only (not timed): both cold runs at once
        flow_setup = pool.submit(prepare, "caching-flow", quick)
        dvc_setup = pool.submit(prepare, "caching-dvc", quick)
        (flow_project, cold_flow), (dvc_project, cold_dvc) = flow_setup.result(), dvc_setup.result()
    python = str(flow_project / ".venv/bin/python")
    port = free_port()
    server_command = [str(flow_project / ".venv/bin/prefect"), "server", "start", "--host", "127.0.0.1", "--port"]
    try:
        first_repro = dvc_repro(dvc_project)
        logger.info("dvc repro after the cold run: ran %s", first_repro["ran"])
        unchanged: list[dict[str, Any]] = []
        api_url = f"http://127.0.0.1:{port}/api"
        with background_server(
            [*server_command, str(port)],
            flow_project,
            project_env(flow_project),
            flow_project.parent / "prefect-server.log",
            f"{api_url}/health",
        ) as server_seconds:
            logger.info("persistent Prefect server at %s healthy in %.1f s", api_url, server_seconds)
            for repeat in range(repeats):
                row = {
                    "repeat": repeat,
                    "help_wall": timed([str(flow_project / ".venv/bin/retrain"), "--help"], flow_project),
                    "import_wall": timed([python, "-c", "import flows.cli"], flow_project),
                    "floor_wall": timed([python, "-c", LIBRARY_FLOOR], flow_project),
                    "rerun": retrain_run(flow_project, None, "--force"),  # the flow, every stage from cache
                    "rerun_server": retrain_run(flow_project, api_url, "--force"),
                    "noop": retrain_run(flow_project),  # the no-op check (engine/noop.py), beside dvc repro
                    "repro": dvc_repro(dvc_project),
                    "recorded_noop": recorded_noop(flow_project, api_url),
                }
                logger.info(
                    "repeat %d: rerun %.1f s (persistent server %.1f s, library floor %.1f s), no-op %.2f s, "
                    "dvc repro %.1f s, recorded no-op %.1f s",
                    repeat + 1,
                    row["rerun"]["wall"],
                    row["rerun_server"]["wall"],
                    row["floor_wall"],
                    row["noop"]["wall"],
                    row["repro"]["wall"],
                    row["recorded_noop"]["wall"],
                )
                unchanged.append(row)
                save_raw({"unchanged": unchanged, "first_repro": first_repro, "cold_flow": cold_flow})
        changes: list[dict[str, Any]] = []
        for label, key, value in CHANGES:
            if value is None:
                current = get_param(flow_project, key)
                value = current + 1 if quick else current - 2
            old = set_param(flow_project, key, value)
            set_param(dvc_project, key, value)
            logger.info("change %s: %s %s -> %s", label, key, old, value)
            flow = retrain_run(flow_project)
            repro = dvc_repro(dvc_project)
            flow_ran = [n for n, s in flow["stages"].items() if s == "ran"]
            changes.append(
                {
                    "label": label,
                    "key": key,
                    "old": old,
                    "new": value,
                    "flow": flow,
                    "flow_ran": flow_ran,
                    "flow_expected": expected_stages(key, flow=True),
                    "dvc": repro,
                    "dvc_expected": expected_stages(key, flow=False),
                }
            )
            logger.info("change %s: flow ran %s, dvc ran %s", label, flow_ran, repro["ran"])
            save_raw({"unchanged": unchanged, "changes": changes, "first_repro": first_repro, "cold_flow": cold_flow})
        return {
            "settings": {"repeats": repeats, "quick": quick, "quick_params": QUICK_PARAMS if quick else {}},
            "cold_flow": cold_flow,
            "cold_dvc_project_flow": cold_dvc,
            "first_repro": first_repro,
            "unchanged": unchanged,
            "changes": changes,
        }
    finally:
        remove_project(flow_project)
        remove_project(dvc_project)


def save_raw(data: dict[str, Any]) -> None:
    """Raw results so far (benchmarks/results/caching.raw.json): a crash later loses no measurement."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.raw.json").write_text(json.dumps(data, indent=2, default=str))


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Medians of (a) and (b); PASS / MISS of each change."""
    rows = data["unchanged"]
    beyond = [r["rerun"]["wall"] - r["help_wall"] for r in rows]
    beyond_import = [r["rerun"]["wall"] - r["import_wall"] for r in rows]
    server_rows = [r for r in rows if "rerun_server" in r]  # absent from results of earlier versions
    noop_rows = [r for r in rows if "noop" in r]
    return {
        "noop_wall": median([r["noop"]["wall"] for r in noop_rows]) if noop_rows else None,
        "noop_vs_repro": median([r["noop"]["wall"] / r["repro"]["wall"] for r in noop_rows]) if noop_rows else None,
        "noop_decided": all(r["noop"].get("noop") and r["recorded_noop"].get("noop") for r in noop_rows),
        "noop_decide_seconds": median([r["noop"].get("in_flow_seconds") for r in noop_rows]) if noop_rows else None,
        "recorded_noop_wall": median([r["recorded_noop"]["wall"] for r in noop_rows]) if noop_rows else None,
        "rerun_server_wall": median([r["rerun_server"]["wall"] for r in server_rows]) if server_rows else None,
        "rerun_server_beyond_start": (
            median([r["rerun_server"]["wall"] - r["help_wall"] for r in server_rows]) if server_rows else None
        ),
        "rerun_server_in_flow": median([r["rerun_server"].get("in_flow_seconds") for r in server_rows])
        if server_rows
        else None,
        "floor_wall": median([r["floor_wall"] for r in server_rows]) if server_rows else None,
        "rerun_wall": median([r["rerun"]["wall"] for r in rows]),
        "rerun_in_flow": median([r["rerun"].get("in_flow_seconds") for r in rows]),
        "help_wall": median([r["help_wall"] for r in rows]),
        "import_wall": median([r["import_wall"] for r in rows]),
        "rerun_beyond_start": median(beyond),
        "rerun_beyond_import": median(beyond_import),
        "rerun_all_cached": all(
            all(s == "cached" for n, s in run["stages"].items() if n != "promote")
            for r in rows
            for run in (r["rerun"], r.get("rerun_server", r["rerun"]))
        ),
        "repro_wall": median([r["repro"]["wall"] for r in rows]),
        "repro_nothing_ran": all(not r["repro"]["ran"] for r in rows),
        "changes": [
            {
                "label": c["label"],
                "key": c["key"],
                "flow_pass": set(c["flow_ran"]) == set(c["flow_expected"]),
                "dvc_pass": set(c["dvc"]["ran"]) == set(c["dvc_expected"]),
            }
            for c in data["changes"]
        ],
    }


def render(data: dict[str, Any], stats: dict[str, Any], info: dict[str, Any]) -> str:
    """The Markdown section."""
    rows = []
    if stats.get("noop_wall") is not None:
        rows += [
            [
                "(n) no-op `retrain run`, nothing changed (decided before Prefect / MLflow load): wall",
                f"**{stats['noop_wall']:.2f} s**",
                f"≤ {NOOP_TARGET_SECONDS} s",
                status(stats["noop_wall"], NOOP_TARGET_SECONDS),
            ],
            [
                "(n) no-op wall / `dvc repro` wall (b), same repeat",
                f"**{stats['noop_vs_repro']:.2f} x**",
                f"≤ {NOOP_TARGET_RATIO} x",
                status(stats["noop_vs_repro"], NOOP_TARGET_RATIO),
            ],
            [
                "(n) recorded no-op: a scheduled run's flow-run process (import the flow, run it, state Unchanged), "
                "persistent Prefect server: wall",
                f"**{stats['recorded_noop_wall']:.1f} s**",
                f"≤ {RECORDED_TARGET_SECONDS} s",
                status(stats["recorded_noop_wall"], RECORDED_TARGET_SECONDS),
            ],
        ]
    rows += [
        [
            "(a) `retrain run --force`, nothing changed (the flow, every stage from cache): wall",
            f"{stats['rerun_wall']:.1f} s",
            "",
            "",
        ],
        [
            "(a) process start (`retrain --help`) / CLI import (`import flows.cli`)",
            f"{stats['help_wall']:.1f} s / {stats['import_wall']:.1f} s",
            "",
            "",
        ],
        [
            "(a) rerun beyond process start (wall - `retrain --help`), ephemeral Prefect server (the default)",
            f"**{stats['rerun_beyond_start']:.1f} s**",
            "≤ 3 s",
            status(stats["rerun_beyond_start"], TARGET_SECONDS),
        ],
        [
            "(b) `dvc repro`, nothing changed, after a `dvc repro`",
            f"**{stats['repro_wall']:.1f} s**",
            "≤ 3 s",
            status(stats["repro_wall"], TARGET_SECONDS),
        ],
    ]
    if stats.get("rerun_server_wall") is not None:
        rows += [
            [
                "(a) rerun beyond process start, persistent Prefect server (`PREFECT_API_URL`, as with `make servers`)",
                f"**{stats['rerun_server_beyond_start']:.1f} s** (wall {stats['rerun_server_wall']:.1f} s)",
                "≤ 3 s",
                status(stats["rerun_server_beyond_start"], TARGET_SECONDS),
            ],
            [
                "(a) library floor: a process importing only Prefect, MLflow's SQLite store and DVC",
                f"{stats['floor_wall']:.1f} s",
                "",
                "",
            ],
        ]
    for change, verdict in zip(data["changes"], stats["changes"], strict=True):
        what = f"(c) `{change['key']}` {change['old']} → {change['new']}"
        rows.append(
            [
                f"{what}: `retrain run` ran",
                ", ".join(change["flow_ran"]) or "(none)",
                ", ".join(change["flow_expected"]),
                "PASS" if verdict["flow_pass"] else "MISS",
            ]
        )
        rows.append(
            [
                f"{what}: `dvc repro` ran",
                ", ".join(change["dvc"]["ran"]) or "(none)",
                ", ".join(change["dvc_expected"]),
                "PASS" if verdict["dvc_pass"] else "MISS",
            ]
        )
    settings = data["settings"]
    mode = "quick settings (smoke test, not the measurement)" if settings["quick"] else "default params.yaml"
    cached = "every stage but promote was a cache hit" if stats["rerun_all_cached"] else "SOME STAGE RE-RAN"
    repro = "DVC ran no stage" if stats["repro_nothing_ran"] else "DVC RAN A STAGE"
    lines = [
        "## Caching",
        "",
        markdown_table(["measurement", "measured", "target / expected", ""], rows),
        "",
        f"Medians of {settings['repeats']} interleaved repeats, {mode}; {machine_line(info)}. Two fresh clones, each "
        f"after one cold `retrain run` (not timed, {data['cold_flow']['wall']:.0f} s); D also after one `dvc repro`.",
        f"(a): in every rerun {cached}; the pipeline's own clock (MLflow parent run to summary) read "
        f"{stats['rerun_in_flow']:.1f} s; wall minus the CLI import alone: {stats['rerun_beyond_import']:.1f} s. "
        f"(b): in every repeat {repro}.",
        "(c): keys changed one after another in params.yaml of both projects; expected = the stages reading the key "
        "plus everything downstream of their outputs in engine/stage.py (the flow also runs promote, which is "
        "never cached).",
    ]
    if stats.get("rerun_server_wall") is not None:
        lines.append(
            f"Persistent server: the pipeline's own clock read {stats['rerun_server_in_flow']:.1f} s. "
            "The rest of the wall is process start, imports and interpreter teardown; the library floor above "
            "is what importing Prefect, MLflow's SQLite store and DVC alone costs, so no rerun can take less."
        )
    load = (info.get("load_average") or [float("nan")])[0]
    if stats.get("noop_wall") is not None:
        decided = "every no-op decided unchanged" if stats["noop_decided"] else "A NO-OP RAN THE FLOW"
        lines.append(
            f"(n): {decided}; the check itself (re-hash every dvc.lock dep and out, params, lock, registry) took "
            f"{stats['noop_decide_seconds']:.2f} s of the wall; the recorded no-op imports Prefect and the flow "
            "module and ends in state Unchanged with its artifact, no stage and no MLflow run (docs/caching.md)."
        )
    lines.append(f"At the start, {load_note(load, info['cpu_count'])}; at the end: {data.get('load_end', load):.1f}.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000-row sample, 2 trials per family (smoke test)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of (a) and (b) (default 5)")
    parser.add_argument("--from-json", type=Path, help="re-analyse raw results saved by an earlier run (no measuring)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and write benchmarks/results/caching.{json,md}."""
    args = parse_args(argv)
    setup_logging()
    info = machine_info()
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        info = data.get("machine") or info
        data = {k: v for k, v in data.items() if k not in ("analysis", "machine", "finished")}
        data.setdefault("settings", {"repeats": len(data["unchanged"]), "quick": args.quick, "partial": True})
        data.setdefault("changes", [])
    else:
        data = measure(args.repeats, args.quick)
        save_raw(data)
    stats = analyse(data)
    data |= {"machine": info, "analysis": stats, "finished": machine_info()["date"]}
    data.setdefault("load_end", os.getloadavg()[0])
    write_results(NAME, data, render(data, stats, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
