"""Single-row latency and batch throughput of retrain's serving path: booster vs compiled forest, per layer.

    .venv/bin/python -m benchmarks.serve_model [--model-dir DIR | --model NAME@ALIAS --tracking-uri URI]
                                               [--trees 1000] [--leaves 21] [--calls 2000] [--batch-rows 100000]
                                               [--fresh-cache]

Not a test: it prints a table (stdout) and writes benchmarks/results/serve_model.{md,json}, side by side for the
LightGBM booster (`RETRAIN_COMPILED=off`) and the lleaves-compiled forest (retrain/serving/compiled.py), of

- single row, p50 / p99 ms: `ServingModel.predict` on a one-row typed DataFrame (in process, what the latency gate
  times); `ServingModel.predict_rows` on a parsed JSON row (serve-model's path); `ScoringApp.handle` on a pre-built
  JSON body (the protocol's own work); `POST /invocations` over a kept-alive HTTP/1.1 connection to a server in
  another process minus `GET /ping` (the HTTP floor); `mlflow.pyfunc` `predict` on the saved pyfunc minus MLflow's
  own floor (the pyfunc of a trivial model that returns its input's length);
- batch rows/s of `ServingModel.predict` on `--batch-rows` Adult rows (a typed DataFrame, encoding included), on 1
  and 2 threads, and the max |dp| of the compiled scores against `Booster.predict`;
- compile seconds (a cold cache: `--fresh-cache`, else whatever the cache held) and cached-load seconds.

Issue 18's targets: in-process and HTTP-minus-floor single row p50 <= 0.3 ms, p99 <= 1 ms; pyfunc <= its floor
+ 0.3 ms; batch >= 300k rows/s on 2 cores, |dp| <= 1e-12. Layers run in interleaved blocks (the machine's load moves
them alike); the 1-minute load average is reported at start and end.

The model: `--model-dir` (a saved retrain model directory), a registered version through the verified loader
(`--model`), or by default a LightGBM shaped like the Adult champion (`--trees` 1,000 at 21 leaves) fitted on 10,000
rows of `data/source/adult_train.csv.gz` in a temp dir.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._runs import machine_info, markdown_table, setup_logging, write_results

logger = logging.getLogger("benchmarks.serve_model")

ROOT = Path(__file__).resolve().parent.parent
ADULT = ROOT / "data" / "source" / "adult_train.csv.gz"
WARMUP = 200
FIT_ROWS = 10_000
"""Rows the default model is fitted on (latency depends on trees and leaves, not on the rows seen)."""
TARGET_P50_MS, TARGET_P99_MS = 0.3, 1.0
NAME = "serve_model"


def adult_like_model(dest: Path, trees: int, leaves: int) -> Path:
    """A LightGBM fitted on Adult with the champion's shape, saved as promote's candidates are."""
    from retrain.config import load_params
    from retrain.metrics import encode_target
    from retrain.models.estimators import build_model, save_model

    dataset = load_params(ROOT / "params.yaml").dataset
    frame = pd.read_csv(ADULT, na_values=["?"]).sample(FIT_ROWS, random_state=0)
    X, y = frame[dataset.features], encode_target(frame[dataset.target], dataset)
    hyper = {"n_estimators": trees, "num_leaves": leaves, "learning_rate": 0.02, "verbose": -1, "n_jobs": 2}
    started = time.perf_counter()
    model = build_model("lightgbm", hyper, dataset.numeric, dataset.categorical).fit(X, y)
    logger.info("fitted %d trees, %d leaves in %.1f s", trees, leaves, time.perf_counter() - started)
    save_model(model, "lightgbm", dataset.features, dest, labels=dataset.labels)
    return dest


def probe_rows(features: list[str], n: int) -> pd.DataFrame:
    """Adult rows with the model's features (the first n of the training file; JSON-safe values)."""
    frame = pd.read_csv(ADULT, na_values=["?"], nrows=n)[features]
    return frame.astype(object).where(frame.notna(), None)


def percentiles(call: Callable[[int], Any], calls: int) -> tuple[float, float]:
    """(p50, p99) in ms of call(i) for i in range(calls), after WARMUP untimed calls."""
    for i in range(WARMUP):
        call(i)
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        times[i] = time.perf_counter() - started
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99)


def serve_child(model_dir: Path, compiled: str) -> None:
    """`--serve DIR`: what `retrain serve-model` runs after verification; prints the port, serves until SIGTERM."""
    from retrain.serving import http as serving_http
    from retrain.serving.predict import ServingModel

    app = serving_http.ScoringApp(
        ServingModel(model_dir, compiled=compiled), numeric=serving_http.numeric_columns(model_dir)
    )

    def ready(server: serving_http.ScoringServer) -> None:
        sys.stdout.write(f"{server.server_address[1]}\n")
        sys.stdout.flush()

    serving_http.serve(app, "127.0.0.1", 0, ready)


def interleaved(calls_by_name: dict[str, Callable[[int], Any]], calls: int, blocks: int = 4) -> dict[str, list[float]]:
    """{name: [p50, p99]}: each layer timed in `blocks` blocks taking turns; the median of the blocks' percentiles."""
    found: dict[str, list[tuple[float, float]]] = {name: [] for name in calls_by_name}
    for _ in range(blocks):
        for name, call in calls_by_name.items():
            found[name].append(percentiles(call, max(calls // blocks, 1)))
    return {name: [float(np.median([p[k] for p in v])) for k in (0, 1)] for name, v in found.items()}


@contextmanager
def http_server(model_dir: Path, compiled: str) -> Iterator[http.client.HTTPConnection]:
    """The server in a child process (its own GIL) and a kept-alive connection to it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve_model", "--serve", str(model_dir), "--compiled", compiled],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        port = int(child.stdout.readline())  # type: ignore[union-attr]
        yield http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)


class TrivialModel:
    """MLflow's floor: a pyfunc whose model does nothing (zeros), behind the same signature as ours."""

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """Zeros, one per row."""
        return np.zeros(len(model_input))


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> TrivialModel:
    """The floor model's loader (this module is its MLmodel `loader_module`: nothing is unpickled)."""
    return TrivialModel()


def pyfunc_models(model_dir: Path, example: pd.DataFrame, work: Path) -> tuple[Any, Any]:
    """(our model through mlflow.pyfunc, the trivial pyfunc: MLflow's own floor), saved to and loaded from `work`."""
    import mlflow.pyfunc

    from adapters.mlflow_packaging import pyfunc_kwargs

    ours, trivial, empty = work / "pyfunc", work / "trivial", work / "empty"
    empty.mkdir()
    kwargs = pyfunc_kwargs(ROOT, model_dir, example)
    mlflow.pyfunc.save_model(str(ours), **kwargs)
    mlflow.pyfunc.save_model(
        str(trivial), loader_module=__name__ if __name__ != "__main__" else "benchmarks.serve_model",
        data_path=str(empty), signature=kwargs["signature"], input_example=example,
    )  # fmt: skip
    return mlflow.pyfunc.load_model(str(ours)), mlflow.pyfunc.load_model(str(trivial))


def batch_rates(models: dict[str, Any], batch: pd.DataFrame, repeats: int = 3) -> dict[str, float]:
    """rows/s of `predict` on the batch, per (model, threads); the best of interleaved repeats (noise is one-sided)."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, model in models.items():
            for threads in (1, 2):
                model.fast.threads = threads
                started = time.perf_counter()
                model.predict(batch)
                rate = len(batch) / (time.perf_counter() - started)
                key = f"{name}, {threads} thread{'s' if threads > 1 else ''}"
                best[key] = max(best.get(key, 0.0), rate)
    return best


def measure(model_dir: Path, calls: int, batch_rows: int, work: Path) -> dict[str, Any]:
    """Every number of the section (see the module docstring)."""
    from retrain.serving.http import CONTENT_JSON, ScoringApp, numeric_columns
    from retrain.serving.predict import ServingModel

    started = time.perf_counter()
    compiled = ServingModel(model_dir, compiled="wait")
    first = compiled.compiled[0]
    if first.forest is None:
        raise SystemExit(f"the compiled forest fell back to the booster: {first.reason}")
    cached = ServingModel(model_dir, compiled="wait").compiled[0]
    build = {
        "first_load_s": time.perf_counter() - started,
        "compile_s": first.seconds.get("compile"),
        "cached_load_s": cached.seconds["ready"],
    }
    booster = ServingModel(model_dir, compiled="off")
    models = {"booster": booster, "compiled": compiled}
    X = probe_rows(booster.features, 500)
    typed = pd.DataFrame(X.to_numpy(dtype=object).tolist(), columns=list(X.columns))
    singles = [typed.iloc[[i]] for i in range(len(typed))]
    lists = [[row] for row in X.to_numpy(dtype=object).tolist()]
    columns = list(X.columns)
    bodies = [json.dumps({"dataframe_split": {"columns": columns, "data": row}}).encode() for row in lists]
    apps = {name: ScoringApp(m, numeric=numeric_columns(model_dir)) for name, m in models.items()}
    layers: dict[str, Callable[[int], Any]] = {}
    for name, m in models.items():
        layers[f"{name}: predict, one-row DataFrame"] = lambda i, m=m: m.predict(singles[i % 500])
        layers[f"{name}: predict_rows, a JSON row"] = lambda i, m=m: m.predict_rows(columns, lists[i % 500])
        layers[f"{name}: ScoringApp.handle"] = lambda i, a=apps[name]: a.handle(
            "POST", "/invocations", bodies[i % 500], CONTENT_JSON
        )
    single = interleaved(layers, calls)

    ours, trivial = pyfunc_models(model_dir, typed.head(5), work)  # RETRAIN_COMPILED=wait: the cached forest
    assert ours.get_raw_model().compiled and ours.get_raw_model().compiled[0].forest is not None, "pyfunc compiled"
    pyfunc = interleaved(
        {
            "pyfunc (ours, compiled)": lambda i: ours.predict(singles[i % 500]),
            "pyfunc floor (trivial model)": lambda i: trivial.predict(singles[i % 500]),
        },
        calls,
    )
    pyfunc["pyfunc minus its floor's p50"] = [
        pyfunc["pyfunc (ours, compiled)"][k] - pyfunc["pyfunc floor (trivial model)"][0] for k in (0, 1)
    ]
    over_http: dict[str, list[float]] = {}
    for name in models:
        with http_server(model_dir, "wait" if name == "compiled" else "off") as connection:

            def post(i: int, c: http.client.HTTPConnection = connection) -> bytes:
                c.request("POST", "/invocations", bodies[i % 500], {"Content-Type": "application/json"})
                return c.getresponse().read()

            def ping(_i: int, c: http.client.HTTPConnection = connection) -> bytes:
                c.request("GET", "/ping")
                return c.getresponse().read()

            served = json.loads(post(0))["predictions"]
            assert np.allclose(served, booster.predict(singles[0]), rtol=0, atol=1e-12), "HTTP answers differ"
            timed = interleaved({"post": post, "ping": ping}, calls)
            over_http[f"{name}: POST /invocations (HTTP)"] = timed["post"]
            over_http[f"{name}: GET /ping (the HTTP floor)"] = timed["ping"]
            over_http[f"{name}: HTTP minus the floor's p50"] = [timed["post"][k] - timed["ping"][0] for k in (0, 1)]

    full = pd.read_csv(ADULT, na_values=["?"])[booster.features]
    batch = pd.concat([full] * (batch_rows // len(full) + 1), ignore_index=True).head(batch_rows)
    rates = batch_rates(models, batch)
    booster.fast.threads = compiled.fast.threads = 2
    encoded = booster.fast.encode(batch)
    max_dp = float(np.abs(compiled.predict(batch) - booster.fast.booster.predict(encoded, num_threads=2)).max())
    return {
        "single_row_ms": {**single, **pyfunc, **over_http},
        "batch_rows_per_s": rates,
        "batch_rows": batch_rows,
        "max_abs_dp_vs_booster": max_dp,
        "build_seconds": build,
    }


def section(what: str, result: dict[str, Any], calls: int, loads: tuple[float, float], results_name: str = NAME) -> str:
    """The Markdown section: single-row table, batch table, build times, verdicts against issue 18's targets."""
    single = result["single_row_ms"]
    rows = [[name, f"{p50:.3f}", f"{p99:.3f}"] for name, (p50, p99) in single.items()]
    rates = result["batch_rows_per_s"]
    batch = [[name, f"{rate:,.0f}"] for name, rate in rates.items()]
    build = result["build_seconds"]
    compile_s = "cached before this run" if build["compile_s"] is None else f"{build['compile_s']:.1f} s"
    checks = [
        ("in-process predict p50 / p99", single["compiled: predict, one-row DataFrame"], TARGET_P50_MS, TARGET_P99_MS),
        ("HTTP minus floor p50 / p99", single["compiled: HTTP minus the floor's p50"], TARGET_P50_MS, TARGET_P99_MS),
        ("pyfunc minus its floor p50", single["pyfunc minus its floor's p50"], TARGET_P50_MS, math.inf),
    ]
    verdicts = [
        f"- {label}: {p50:.3f} / {p99:.3f} ms: {'MET' if p50 <= t50 and p99 <= t99 else 'NOT MET'}"
        for label, (p50, p99), t50, t99 in checks
    ]
    two = rates["compiled, 2 threads"]
    verdicts.append(f"- batch on 2 threads: {two:,.0f} rows/s (>= 300,000): {'MET' if two >= 300_000 else 'NOT MET'}")
    dp = result["max_abs_dp_vs_booster"]
    batch_header = f"batch of {result['batch_rows']:,} rows (encode + score)"
    verdicts.append(f"- max |dp| vs Booster.predict: {dp:.2e} (<= 1e-12): {'MET' if dp <= 1e-12 else 'NOT MET'}")
    return (
        f"## {results_name}: booster vs compiled forest\n\n{what}; {calls} single-row calls per layer in interleaved "
        f"blocks; load average {loads[0]:.1f} at start, {loads[1]:.1f} at end ({os.cpu_count()} CPUs).\n\n"
        f"{markdown_table(['single row', 'p50 ms', 'p99 ms'], rows)}\n\n"
        f"{markdown_table([batch_header, 'rows/s'], batch)}\n\n"
        f"Compile: {compile_s}; first load {build['first_load_s']:.1f} s; cached load {build['cached_load_s']:.3f} s."
        f"\n\nIssue 18's targets:\n\n" + "\n".join(verdicts) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, get the model, measure, write the section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="a saved retrain model directory")
    parser.add_argument("--model", default=None, help="NAME@ALIAS or NAME/VERSION, loaded by the verified loader")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--trees", type=int, default=1000, help="trees of the default Adult-like model")
    parser.add_argument("--leaves", type=int, default=21)
    parser.add_argument("--calls", type=int, default=2000, help="timed single-row calls per layer")
    parser.add_argument("--batch-rows", type=int, default=100_000, help="rows of the batch (Adult rows repeated)")
    parser.add_argument("--fresh-cache", action="store_true", help="compile into an empty cache (times the compile)")
    parser.add_argument("--results-name", default=NAME, help="benchmarks/results/<name>.md/.json to write")
    parser.add_argument("--quick", action="store_true", help="100 trees, 200 calls, 5,000 batch rows: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="accepted for `make bench`; one interleaved run")
    parser.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compiled", default="off", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.trees, args.calls, args.batch_rows = 100, 200, 5_000
    if args.serve is not None:
        serve_child(args.serve, args.compiled)
        return 0
    setup_logging()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        os.environ["RETRAIN_COMPILED"] = "wait"  # the pyfunc loader's mode in this process
        if args.fresh_cache:
            os.environ["XDG_CACHE_HOME"] = str(Path(work) / "cache")
        if args.model:
            import shutil

            from adapters.lineage import parse_model_ref
            from adapters.model_store import verified_version

            ref = parse_model_ref(args.model)
            with verified_version(args.tracking_uri, ref.name, ref.alias or str(ref.version)) as verified:
                model_dir = Path(shutil.copytree(verified.model_dir, Path(work) / "model"))
            boosters = sorted(model_dir.rglob("booster.txt"))
            trees = boosters[0].read_text().count("\nTree=") if boosters else "?"
            what = f"registered {args.model} (verified download; {trees} trees)"
        elif args.model_dir:
            model_dir, what = args.model_dir, str(args.model_dir)
        else:
            model_dir = adult_like_model(Path(work) / "model", args.trees, args.leaves)
            what = f"Adult-like LightGBM, {args.trees} trees, {args.leaves} leaves"
        result = measure(model_dir, args.calls, args.batch_rows, Path(work))
    loads = (load_start, os.getloadavg()[0])
    data = {"what": what, "calls": args.calls, "load_average": loads, "machine": machine_info(), **result}
    write_results(args.results_name, data, section(what, result, args.calls, loads, args.results_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
