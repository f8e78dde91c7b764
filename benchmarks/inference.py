"""Inference cost of the registered champion: through mlflow.pyfunc in process, and over HTTP.

    .venv/bin/python -m benchmarks.inference [--quick] [--repeats N] [--project DIR] [--profile]

Without --project, a temp clone of the project runs `retrain run` (the default Adult flow) and its
champion is measured; with --project DIR, DIR's champion is (e.g. `--project .` for this checkout).
Through `mlflow.pyfunc.load_model("models:/<name>@champion")`: single-row latency p50/p95/p99 (one call
per single-row DataFrame, rows sliced before the clock starts), batch throughput on `--batch-rows` test
rows (the test set repeated), each layer below the pyfunc (to see whose cost it is), and the LightGBM
thread policy against one thread on the same batch (outputs asserted bit-identical). Then `mlflow models
serve --env-manager local` on 127.0.0.1: single-row request latency (keep-alive HTTP/1.1, JSON bodies
built before the clock) and one batch request; the server is stopped at the end.

The in-process pyfunc loads with `RETRAIN_COMPILED=wait` (unless set otherwise): its LightGBM parts are compiled
forests (retrain/serving/compiled.py) from the first call, as a long-running server has them once built
(`RETRAIN_COMPILED=off` measures the booster); the server child runs the default `background` mode, which loads the
forest from the cache the in-process load filled. benchmarks/serve_model.py puts booster and forest side by side.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import logging
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._runs import (
    background_server,
    free_port,
    load_note,
    machine_info,
    markdown_table,
    project_env,
    remove_project,
    setup_logging,
    temp_project,
    write_results,
)
from benchmarks._support import retrain_cli
from retrain.config import load_params

logger = logging.getLogger("benchmarks.inference")

NAME = "inference"
TARGETS = {"p50_ms": 1.0, "p99_ms": 5.0, "batch_rows_per_s": 300_000.0}
"""Issue 7's targets for the pyfunc path."""
RELAXED_LATENCY_MS = 1_000_000.0
"""A run whose only failed gate is latency (a loaded machine's p95) is redone with this bound: same model."""
SERVE_START_SECONDS = 300.0
FEW_TREES = 100
"""The batch is also scored with only this many boosting iterations: LightGBM's cost per row grows with trees."""
WARMUP_ROWS = 2048
"""Rows of the untimed warm-up call per batch layer (enough to take the multi-threaded path)."""
BLOCK = 50
"""Single-row calls a layer makes before the next layer takes its turn."""
CHECK_ROWS = 20_000
"""Rows of the batch also scored by the pandas-encoding predictor (the reference the fast path must equal)."""


def ensure_champion(project: Path | None, quick: bool) -> tuple[Path, dict[str, Any]]:
    """The project whose champion is measured: `project`, or a temp clone after a default `retrain run`."""
    if project is not None:
        return project.resolve(), {"flow": "reused", "project": str(project.resolve())}
    root = temp_project("inference")
    sets: list[str] = []
    if quick:
        sets = [
            "--set",
            "ingest.sample_rows=3000",
            "--set",
            "candidates.n_trials=2",
            "--set",
            "candidates.families=[lightgbm, logreg]",
        ]
    started = time.perf_counter()
    done = retrain_cli(root, "run", "--json", *sets, check=False)
    info: dict[str, Any] = {"flow": "retrain run " + " ".join(sets), "exit": done.returncode}
    if done.returncode == 3:
        record = json.loads((root / "models" / "evaluate" / "gate_record.json").read_text())
        failed = list(record.get("failed_gates") or [])
        info["first_run_failed_gates"] = failed
        info["first_run_latency"] = record.get("latency")
        if failed != ["latency"]:
            raise RuntimeError(f"retrain run rejected the candidate on gates {failed}; no champion to measure")
        logger.warning(
            "latency gate failed on a loaded machine (%s); rerun with the bound relaxed", record.get("latency")
        )
        sets = [*sets, "--set", f"evaluate.gates.latency.max_p95_ms={RELAXED_LATENCY_MS:g}"]
        done = retrain_cli(root, "run", "--json", *sets, check=False)
        info["rerun"] = {"flow": "retrain run " + " ".join(sets), "exit": done.returncode}
    if done.returncode != 0:
        raise RuntimeError(f"retrain run exited {done.returncode}: {done.stderr[-3000:]}")
    info["flow_seconds"] = time.perf_counter() - started
    return root, info


def batch_of(X: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` rows: the test set repeated (and cut) to that size."""
    copies = -(-rows // len(X))
    return pd.concat([X] * copies, ignore_index=True).iloc[:rows].reset_index(drop=True)


def timed(call: Callable[[], Any]) -> float:
    """Seconds for one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def single_row_layers(model: Any) -> dict[str, Callable[[pd.DataFrame], Any]]:
    """The pyfunc and each layer below it, as predict functions of a DataFrame."""
    python_model = model.get_raw_model()  # the ServingModel the loader module returned
    layers: dict[str, Callable[[pd.DataFrame], Any]] = {
        "pyfunc (MLflow schema enforcement + ours)": model.predict,
        "ServingModel.predict (ours)": lambda f: python_model.predict(f),
    }
    fast = getattr(python_model, "fast", None)
    if fast is not None:
        layers["FastLightGBM.predict_scores"] = fast.predict_scores
        layers["FastLightGBM.encode"] = fast.encode
        layers["booster.predict on the encoded rows (1 thread)"] = _booster_on(fast, 1)
    return layers


def _booster_on(fast: Any, threads: int) -> Callable[[pd.DataFrame], Any]:
    """booster.predict on pre-encoded rows (the encoding is done before the clock, cached per frame)."""
    cache: dict[int, np.ndarray] = {}

    def predict(frame: pd.DataFrame) -> Any:
        encoded = cache.get(id(frame))
        if encoded is None:
            encoded = cache[id(frame)] = fast.encode(frame)
        return fast.booster.predict(encoded, num_threads=threads)

    return predict


def measure_pyfunc(model: Any, X: pd.DataFrame, args: argparse.Namespace) -> dict[str, Any]:
    """Single-row percentiles per layer and batch rows/s per layer and thread policy, `repeats` times each."""
    python_model = model.get_raw_model()  # the ServingModel the loader module returned
    fast = getattr(python_model, "fast", None)
    layers = single_row_layers(model)
    single: dict[str, list[dict[str, float]]] = {name: [] for name in layers}
    batch = batch_of(X, args.batch_rows)
    Call = Callable[[pd.DataFrame, Any], Any]
    batch_layers: dict[str, Call] = {"pyfunc": lambda b, e: model.predict(b)}
    before = after = ""
    if fast is not None:
        before = "pyfunc (1 LightGBM thread: before)"
        after = f"pyfunc ({getattr(fast, 'threads', 1)} LightGBM threads for batches: after)"
        trees = fast.booster.num_trees()
        few = min(FEW_TREES, fast.booster.current_iteration())
        batch_layers = {
            before: lambda b, e: _with_threads(fast, 1, lambda: model.predict(b)),
            after: lambda b, e: model.predict(b),
            "ServingModel.predict": lambda b, e: python_model.predict(b),
            "FastLightGBM.encode": lambda b, e: fast.encode(b),
        }
        for threads in sorted({1, getattr(fast, "threads", 1), os.cpu_count() or 1}):
            batch_layers[f"booster.predict, {threads} thread(s), all {trees} trees"] = _booster_call(fast, threads)
        batch_layers[f"booster.predict, 1 thread, first {few} iterations only (cost vs model size)"] = lambda b, e: (
            fast.booster.predict(e, num_threads=1, num_iteration=few)
        )
    encoded = fast.encode(batch) if fast is not None else None
    warm = batch.iloc[:WARMUP_ROWS]
    warm_encoded = fast.encode(warm) if fast is not None else None
    for call in batch_layers.values():
        call(warm, warm_encoded)  # warm-up: lazy imports, thread pools, the layout caches
    rates: dict[str, list[float]] = {name: [] for name in batch_layers}
    outputs: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for name, stats in interleaved_single_rows(layers, X, args.rows).items():
            single[name].append(stats)
        for name, call in batch_layers.items():
            start = time.perf_counter()
            outputs[name] = call(batch, encoded)
            rates[name].append(len(batch) / (time.perf_counter() - start))
        logger.info(
            "repeat %d: pyfunc single-row p50 %.3f ms, batch %s rows/s",
            repeat,
            single[next(iter(layers))][-1]["p50_ms"],
            {k: round(v[-1]) for k, v in rates.items()},
        )
    identical = check_identical(fast, batch, outputs.get(before), outputs.get(after))
    return {
        "single_row": single,
        "batch_rows_per_s": rates,
        "batch_rows": len(batch),
        "identical": identical,
        "lightgbm_trees": fast.booster.num_trees() if fast is not None else None,
    }


def interleaved_single_rows(
    layers: dict[str, Callable[[pd.DataFrame], Any]], X: pd.DataFrame, rows: int
) -> dict[str, dict[str, float]]:
    """p50/p95/p99 ms of `rows` single-row calls per layer, the layers taking turns every BLOCK calls.

    Same protocol as `retrain.evaluation.latency.single_row_latency_ms` (rows sliced before the clock, 10 warm-up
    calls), but interleaved, so a change in the machine's load hits every layer alike.
    """
    singles = [X.iloc[[i % len(X)]] for i in range(rows)]
    for predict in layers.values():
        for frame in singles[:10]:
            predict(frame)
    times = {name: np.empty(rows) for name in layers}
    clock = time.perf_counter
    for start in range(0, rows, BLOCK):
        for name, predict in layers.items():
            out = times[name]
            for i in range(start, min(start + BLOCK, rows)):
                begin = clock()
                predict(singles[i])
                out[i] = clock() - begin
    stats = {}
    for name, seconds in times.items():
        p50, p95, p99 = np.percentile(seconds * 1000.0, [50, 95, 99])
        stats[name] = {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "rows": rows}
    return stats


def _with_threads(fast: Any, threads: int, call: Callable[[], Any]) -> Any:
    """Run `call` with the serving model's LightGBM batch threads set to `threads`, then restore them."""
    saved = getattr(fast, "threads", None)
    fast.threads = threads
    try:
        return call()
    finally:
        if saved is None:
            del fast.threads
        else:
            fast.threads = saved


def _booster_call(fast: Any, threads: int) -> Callable[[pd.DataFrame, Any], Any]:
    """booster.predict on an encoded batch with a fixed thread count."""
    return lambda b, e: fast.booster.predict(e, num_threads=threads)


def check_identical(fast: Any, batch: pd.DataFrame, before: Any, after: Any) -> dict[str, Any]:
    """The served batch (every core) equals one thread on the whole batch and the pandas predictor on a slice."""
    if fast is None:
        return {}
    rows = min(len(batch), CHECK_ROWS)
    reference = np.asarray(fast.predictor.predict_scores(batch.iloc[:rows]))
    out = {
        "rows": len(batch),
        "served_equals_one_thread": bool(np.array_equal(np.asarray(after), np.asarray(before))),
        "reference_rows": rows,
        "served_equals_pandas_predictor": bool(np.array_equal(np.asarray(after)[:rows], reference)),
    }
    assert out["served_equals_one_thread"], "multi-threaded batch scores differ from one-thread scores"
    assert out["served_equals_pandas_predictor"], "served scores differ from LightGBMPredictor.predict_scores"
    return out


def profile_single_rows(model: Any, X: pd.DataFrame, rows: int) -> str:
    """cProfile of `rows` single-row pyfunc calls: the top 25 functions by cumulative time."""
    singles = [X.iloc[[i % len(X)]] for i in range(rows)]
    profiler = cProfile.Profile()
    profiler.enable()
    for frame in singles:
        model.predict(frame)
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(25)
    return buffer.getvalue()


def request(conn: http.client.HTTPConnection, body: bytes) -> bytes:
    """POST /invocations on a kept-alive connection; the response body."""
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"/invocations answered {response.status}: {data[:500]!r}")
    return data


def split_body(frame: pd.DataFrame) -> bytes:
    """The `dataframe_split` JSON body MLflow's scoring server takes (missing values as null)."""
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()


def measure_http(root: Path, uri: str, model: Any, X: pd.DataFrame, args: argparse.Namespace) -> dict[str, Any]:
    """Start `mlflow models serve`, time single-row and batch requests, check the answers, stop the server."""
    port = free_port()
    env = project_env(root)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    log_path = root.parent / "serve.log"
    command = [
        str(root / ".venv" / "bin" / "mlflow"),
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    logger.info("starting %s", " ".join(command[1:]))
    health = f"http://127.0.0.1:{port}/ping"
    with background_server(command, root, env, log_path, health, SERVE_START_SECONDS) as startup:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        singles = [X.iloc[[i % len(X)]] for i in range(args.http_rows)]
        bodies = [split_body(frame) for frame in singles]
        for body in bodies[:20]:
            request(conn, body)
        runs: list[dict[str, float]] = []
        for _ in range(args.repeats):
            times = np.empty(len(bodies))
            for i, body in enumerate(bodies):
                start = time.perf_counter()
                request(conn, body)
                times[i] = time.perf_counter() - start
            p50, p95, p99 = np.percentile(times * 1000.0, [50, 95, 99])
            runs.append({"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)})
            logger.info("HTTP single-row: p50 %.2f ms, p99 %.2f ms", p50, p99)
        batch = batch_of(X, args.http_batch_rows)
        batch_body = split_body(batch)
        answer = json.loads(request(conn, batch_body))["predictions"]
        batch_seconds = [timed(lambda: request(conn, batch_body)) for _ in range(args.repeats)]
        local = np.asarray(model.predict(batch), dtype=float)
        served = np.asarray(answer, dtype=float)
        max_diff = float(np.max(np.abs(served - local))) if len(local) else 0.0
        assert np.allclose(served, local, rtol=1e-12, atol=0.0), f"HTTP answers differ from the pyfunc: {max_diff}"
        conn.close()
        return {
            "port": port,
            "startup_seconds": startup,
            "single_row": runs,
            "batch_rows": len(batch),
            "batch_body_mb": len(batch_body) / 1e6,
            "batch_seconds": batch_seconds,
            "batch_rows_per_s": [len(batch) / s for s in batch_seconds],
            "max_abs_diff_vs_pyfunc": max_diff,
        }


def med(values: list[float]) -> float:
    """Median of the repeats."""
    return float(statistics.median(values))


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    """PASS / MISS against a target."""
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def summarise(pyfunc: dict[str, Any], http: dict[str, Any] | None, family: str) -> str:
    """The Markdown section: the targets table, then the per-layer tables."""
    single = pyfunc["single_row"]
    top = next(iter(single))
    p50 = med([r["p50_ms"] for r in single[top]])
    p95 = med([r["p95_ms"] for r in single[top]])
    p99 = med([r["p99_ms"] for r in single[top]])
    rates = {name: med(values) for name, values in pyfunc["batch_rows_per_s"].items()}
    after = next((v for k, v in rates.items() if "after" in k), rates.get("pyfunc", 0.0))
    before = next((v for k, v in rates.items() if "before" in k), None)
    rows = [
        ["pyfunc single-row p50", f"{p50:.3f} ms", "<= 1 ms", verdict(p50, TARGETS["p50_ms"], False)],
        ["pyfunc single-row p95", f"{p95:.3f} ms", "-", "-"],
        ["pyfunc single-row p99", f"{p99:.3f} ms", "<= 5 ms", verdict(p99, TARGETS["p99_ms"], False)],
        [
            f"pyfunc batch ({pyfunc['batch_rows']:,} rows)",
            f"{after:,.0f} rows/s",
            ">= 300,000 rows/s",
            verdict(after, TARGETS["batch_rows_per_s"], True),
        ],
    ]
    if before is not None:
        rows.append(
            [
                "pyfunc batch, LightGBM on 1 thread (before)",
                f"{before:,.0f} rows/s",
                "-",
                f"x{after / before:.2f} after",
            ]
        )
    if http is not None:
        runs = http["single_row"]
        rows += [
            ["HTTP `mlflow models serve` single-row p50", f"{med([r['p50_ms'] for r in runs]):.2f} ms", "-", "-"],
            ["HTTP single-row p99", f"{med([r['p99_ms'] for r in runs]):.2f} ms", "-", "-"],
            [
                f"HTTP one batch request ({http['batch_rows']:,} rows, {http['batch_body_mb']:.1f} MB JSON)",
                f"{med(http['batch_rows_per_s']):,.0f} rows/s",
                "-",
                "-",
            ],
        ]
    trees = pyfunc.get("lightgbm_trees")
    model = f"{family}, {trees} trees" if trees else family
    text = f"## Inference: the registered champion ({model}) through mlflow.pyfunc and over HTTP\n\n"
    text += markdown_table(["measure", "median", "target", "result"], rows) + "\n"
    layer_rows = [
        [
            name,
            f"{med([r['p50_ms'] for r in runs]):.3f}",
            f"{med([r['p95_ms'] for r in runs]):.3f}",
            f"{med([r['p99_ms'] for r in runs]):.3f}",
        ]
        for name, runs in single.items()
    ]
    text += "\nSingle row, per layer (ms):\n\n" + markdown_table(["layer", "p50", "p95", "p99"], layer_rows) + "\n"
    text += (
        "\nBatch, per layer:\n\n"
        + markdown_table(["layer", "rows/s"], [[name, f"{value:,.0f}"] for name, value in rates.items()])
        + "\n"
    )
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line: where the champion is, how many calls, how many repeats."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small flow and few calls: a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--project", type=Path, default=None, help="measure this project's champion (no flow run)")
    parser.add_argument("--rows", type=int, default=2000, help="single-row pyfunc calls per repeat")
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--http-rows", type=int, default=1000, help="single-row HTTP requests per repeat")
    parser.add_argument("--http-batch-rows", type=int, default=10_000)
    parser.add_argument("--no-http", action="store_true", help="skip `mlflow models serve`")
    parser.add_argument("--profile", action="store_true", help="cProfile the single-row pyfunc path (to stderr)")
    parser.add_argument("--note", action="append", default=[], help="a line added under the table (repeatable)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.rows, args.batch_rows, args.http_rows, args.http_batch_rows = 1, 200, 20_000, 100, 2000
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Get a champion, measure it in process and over HTTP, write the results."""
    args = parse_args(argv)
    setup_logging()
    os.environ.setdefault("RETRAIN_COMPILED", "wait")  # the pyfunc loader's and the server child's mode
    import mlflow

    info = machine_info()
    root, flow = ensure_champion(args.project, args.quick)
    params = load_params(root / "params.yaml")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    uri = f"models:/{params.promote.model_name}@{params.promote.alias}"
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    load_seconds = time.perf_counter() - started
    features = model.metadata.get_input_schema().input_names()
    X = pd.read_parquet(root / "data" / "processed" / "test.parquet")[features].reset_index(drop=True)
    python_model = model.get_raw_model()  # the ServingModel the loader module returned
    family = type(python_model.predictor).__name__
    logger.info("%s: %s, %d features, %d test rows, loaded in %.2fs", uri, family, len(features), len(X), load_seconds)
    pyfunc = measure_pyfunc(model, X, args)
    if args.profile:
        sys.stderr.write(profile_single_rows(model, X, args.rows))
    http = None if args.no_http else measure_http(root, uri, model, X, args)
    if args.project is None:
        remove_project(root)
    text = summarise(pyfunc, http, family)
    text += (
        f"\n{args.repeats} repeats (medians); {load_note(info['load_average'][0], info['cpu_count'])} (at the start). "
        f"Single row: {args.rows} calls per repeat and layer, one single-row DataFrame each, after 10 warm-up "
        f"calls, the layers taking turns every {BLOCK} calls. Batch: the test set repeated to {args.batch_rows:,} "
        "rows, one "
        "call. Outputs of the multi-threaded batch are asserted bit-identical to one thread and to the pandas "
        f"predictor. HTTP: `mlflow models serve --env-manager local`, {args.http_rows} single-row "
        "`dataframe_split` requests per repeat on one keep-alive connection, answers checked against the pyfunc.\n"
    )
    text += "".join(f"\n- {note}" for note in args.note) + ("\n" if args.note else "")
    if args.quick:
        text = text.replace("## Inference", "## (quick smoke run, not a measurement) Inference", 1)
    results = {
        "benchmark": NAME,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "flow": flow,
        "model": {"uri": uri, "predictor": family, "load_seconds": load_seconds, "features": len(features)},
        "targets": TARGETS,
        "pyfunc": pyfunc,
        "http": http,
    }
    write_results(NAME, results, text)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
