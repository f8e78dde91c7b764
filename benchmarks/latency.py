"""Single-row and batch latency of the registered champion through its MLflow pyfunc (a benchmark, not a test).

    .venv/bin/python benchmarks/latency.py --model adult-income --rows 2000 [--profile]

Loads models:/<model>@<alias> from the project's mlflow.db, times `rows` single-row predictions on test
rows (p50/p95/p99), the same through each layer below the pyfunc (to see whose overhead it is), and
batch rows/s. --profile prints the top functions of the single-row path under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from retrain.latency import single_row_latency_ms  # noqa: E402
from retrain.models import encode_frame  # noqa: E402

logger = logging.getLogger("benchmarks.latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: which model, how many rows, where the data is."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=params["promote"]["model_name"], help="registered model name")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--rows", type=int, default=2000, help="single-row calls to time")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "processed" / "test.parquet")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--profile", action="store_true", help="cProfile the single-row pyfunc path")
    return parser.parse_args(argv)


def batch_rows_per_second(predict, X: pd.DataFrame, repeats: int = 5) -> float:
    """Best of `repeats` whole-frame predictions, in rows per second."""
    predict(X)
    best = min(_timed(predict, X) for _ in range(repeats))
    return len(X) / best


def _timed(predict, X: pd.DataFrame) -> float:
    """Seconds for one call."""
    start = time.perf_counter()
    predict(X)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Load the model, time each layer, print a table and return the numbers."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(args.tracking_uri)
    uri = f"models:/{args.model}@{args.alias}"
    model = mlflow.pyfunc.load_model(uri)
    features = model.metadata.get_input_schema().input_names()
    X = pd.read_parquet(args.data)[features].reset_index(drop=True)
    python_model = model.unwrap_python_model()
    predictor = python_model.predictor
    layers = {
        "pyfunc (PyFuncModel.predict: schema enforcement + ours)": model.predict,
        "python model (RetrainModel.predict)": lambda f: python_model.predict(None, f),
        "predictor.predict_scores (retrain.models, pandas encoding)": predictor.predict_scores,
    }
    if getattr(python_model, "fast", None) is not None:
        layers["FastLightGBM.predict_scores (serving path)"] = python_model.fast.predict_scores
    if hasattr(predictor, "booster"):
        layers["encode_frame only"] = lambda f: encode_frame(f, predictor.numeric, predictor.categories)
        encoded = encode_frame(X, predictor.numeric, predictor.categories)
        layers["booster.predict on an encoded row"] = lambda f: predictor.booster.predict(
            encoded.loc[f.index], num_threads=1
        )
    results: dict[str, dict] = {"model": uri, "rows": args.rows, "layers": {}}
    logger.info(f"{uri}: {type(predictor).__name__}, {len(features)} features, {len(X)} test rows")
    logger.info(f"serving code: {sys.modules[type(python_model).__module__].__file__}")
    logger.info(f"{'layer':60s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    for name, predict in layers.items():
        stats = single_row_latency_ms(predict, X, args.rows)
        results["layers"][name] = stats
        logger.info(f"{name:60s} {stats['p50_ms']:8.3f} {stats['p95_ms']:8.3f} {stats['p99_ms']:8.3f}")
    results["batch_rows_per_s"] = batch_rows_per_second(model.predict, X)
    logger.info(f"batch through the pyfunc: {results['batch_rows_per_s']:,.0f} rows/s ({len(X)} rows per call)")
    if args.profile:
        singles = [X.iloc[[i % len(X)]] for i in range(args.rows)]
        profiler = cProfile.Profile()
        profiler.enable()
        for frame in singles:
            model.predict(frame)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    logger.info(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
