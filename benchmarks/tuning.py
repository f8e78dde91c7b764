"""Tuning quality vs time: the pipeline's tuned LightGBM against FLAML AutoML at equal wall budgets.

    .venv/bin/python -m benchmarks.tuning [--quick] [--repeats N] [--budgets 15 30 60]

For Adult (test ROC AUC) and California housing (test R^2), a temp clone of the project runs the
pipeline's own ingest -> validate -> split stages, so both tools get the very same train / valid / test
rows and features. Per budget B and repeat r (seed = params seed + r, the same for both tools):

- ours: `retrain.models.tuning.tune` for the lightgbm family exactly as the candidates stage configures it
  (params' space, fixed params, monotone constraints, CV folds, early stopping, pruning) with
  `timeout_seconds = B` and no trial cap, then the candidates stage's final refit on train + valid;
- FLAML: `AutoML.fit` on train + valid with `estimator_list=["lgbm"]`, `time_budget=B`, the same metric,
  seed and thread count (FLAML picks its own holdout / CV and retrains on all rows, its default);
- AutoGluon 1.6.3 (when .venv-peers exists: `make bench-peers-env`), in a subprocess of .venv-peers
  (benchmarks/peers_autogluon.py: AutoGluon needs pandas < 2.4): `TabularPredictor.fit` on train + valid
  (its own holdout) with `presets="medium_quality"`, `time_limit=B`, the same metric, thread count and seed
  (its holdout split), twice: its default model list (no torch in that env, so GBMs, RF, XT + ensemble;
  "AG medium") and its LightGBM entries only ("AG GBM").

Budgets: --budgets plus --cold-budget (default 90 s: the wall of our cold default `retrain run`). All final
models score the same test rows. Cells run interleaved (tool order rotates) in one process.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._runs import (
    ROOT,
    load_note,
    machine_info,
    markdown_table,
    remove_project,
    setup_logging,
    temp_project,
    write_results,
)
from benchmarks._support import retrain_stages
from retrain.config import DatasetConfig, Params, load_params
from retrain.data.schema import from_json
from retrain.metrics import class_labels, encode_target, score
from retrain.models.estimators import monotone_params, pipeline_scores
from retrain.models.tuning import fit_model, plan_threads, tune

logger = logging.getLogger("benchmarks.tuning")

NAME = "tuning"
DATASETS = {"adult": "params.yaml", "california": "params.california.yaml"}
"""Benchmark dataset -> the params file that configures it in the project."""
NO_TRIAL_CAP = 100_000
"""n_trials for our search: the wall budget, not a trial count, ends it."""
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
"""The peers env's interpreter (`make bench-peers-env`, from requirements-peers.lock)."""
PEERS_SCRIPT = ROOT / "benchmarks" / "peers_autogluon.py"
AUTOGLUON = {"ag_medium": "all", "ag_gbm": "gbm"}
"""AutoGluon tool -> its runner's --models: the preset's default model list, or its LightGBM entries only."""
LABELS = {
    "ours": "ours",
    "ours_cold": "ours, no warm start",
    "flaml": "FLAML",
    "ag_medium": "AG medium",
    "ag_gbm": "AG GBM",
}
"""Tool -> its column; ours_cold (only with --tools) is ours without the params' warm_start (not a peer)."""


@dataclass
class Data:
    """One dataset as the pipeline's split stage wrote it, encoded the way candidates encodes it."""

    name: str
    params: Params
    dataset: DatasetConfig
    metric: str
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_valid: pd.DataFrame
    y_valid: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray

    @property
    def labels(self) -> list[str] | None:
        """Class labels in encoded order (None for regression)."""
        return class_labels(self.dataset)

    @property
    def full(self) -> tuple[pd.DataFrame, np.ndarray]:
        """Train + valid: the rows the final models are fitted on."""
        return pd.concat([self.X_train, self.X_valid], ignore_index=True), np.concatenate([self.y_train, self.y_valid])


def prepare(name: str, params_file: str, sample_rows: int | None) -> Data:
    """A temp clone runs ingest, validate and split for the dataset; the splits are read back."""
    project = temp_project(f"tuning_{name}")
    extra = ["--params", params_file] if params_file != "params.yaml" else []
    if sample_rows is not None:
        params_path = project / params_file
        text = params_path.read_text().replace("sample_rows: null", f"sample_rows: {sample_rows}")
        params_path.write_text(text)
    retrain_stages(project, ["ingest", "validate", "split"], *extra)
    # the checkout's params: "ours" runs the checkout's code, whose config model may be newer than the clone's
    params = load_params(ROOT / params_file)
    dataset = params.dataset
    schema = project / "data" / "raw" / "schema.json"
    if dataset.columns is None or (dataset.is_classification and dataset.labels is None):
        dataset = from_json(dataset, json.loads(schema.read_text()))
    frames = {s: pd.read_parquet(project / "data" / "processed" / f"{s}.parquet") for s in ("train", "valid", "test")}
    features = dataset.features

    def xy(split: str) -> tuple[pd.DataFrame, np.ndarray]:
        frame = frames[split]
        return frame[features].reset_index(drop=True), encode_target(frame[dataset.target], dataset)

    (X_train, y_train), (X_valid, y_valid), (X_test, y_test) = xy("train"), xy("valid"), xy("test")
    logger.info(
        "%s: train %d, valid %d, test %d rows, %d features",
        name,
        len(X_train),
        len(X_valid),
        len(X_test),
        len(features),
    )
    remove_project(project)
    return Data(name, params, dataset, params.evaluate.metric, X_train, y_train, X_valid, y_valid, X_test, y_test)


def run_ours(data: Data, budget: float, seed: int, warm: bool = True) -> dict[str, Any]:
    """The candidates stage's lightgbm search with a `budget`-second clock, then its train + valid refit.

    warm=False drops the params file's `warm_start` configs (found by earlier searches on the same rows), so
    the search starts from nothing, as FLAML and AutoGluon do.
    """
    cfg = data.params.candidates
    update: dict[str, Any] = {"timeout_seconds": budget, "n_trials": NO_TRIAL_CAP}
    if not warm:
        update["warm_start"] = ()
    family = cfg.lightgbm.model_copy(update=update)
    constraints = monotone_params("lightgbm", cfg.monotone, data.dataset.numeric, data.dataset.categorical)
    if constraints:
        family = family.model_copy(update={"fixed": {**family.fixed, **constraints}})
    started = time.perf_counter()
    result = tune(
        "lightgbm",
        family,
        data.X_train,
        data.y_train,
        numeric=data.dataset.numeric,
        categorical=data.dataset.categorical,
        metric=data.metric,
        n_trials=NO_TRIAL_CAP,
        n_folds=cfg.cv_folds,
        seed=seed,
        task=data.dataset.task,
        labels=data.labels,
        parallel_trials=cfg.parallel_trials,
    )
    search_seconds = time.perf_counter() - started
    X_full, y_full = data.full
    _, threads = plan_threads(result.threads, 1)
    model = fit_model(
        "lightgbm",
        result.refit_params(len(X_full)),
        X_full,
        y_full,
        numeric=data.dataset.numeric,
        categorical=data.dataset.categorical,
        task=data.dataset.task,
        threads=threads,
    )
    wall = time.perf_counter() - started
    scores = pipeline_scores(model, data.X_test, data.dataset.task, len(data.labels or ()) or 2)
    return {
        "test": score(data.metric, data.y_test, scores),
        "wall_seconds": wall,
        "search_seconds": search_seconds,
        "trials": len(result.trials),
        "pruned": result.n_pruned,
        "cv": result.cv_score,
        "threads": threads,
        "best": {k: v for k, v in result.refit_params(len(X_full)).items() if k != "monotone_constraints"},
    }


def ours_threads(data: Data) -> int:
    """Threads per LightGBM model the candidates stage would use (FLAML gets the same)."""
    requested = data.params.candidates.lightgbm.fixed.get("n_jobs")
    return plan_threads(requested, data.params.candidates.parallel_trials)[1]


def flaml_frame(X: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """FLAML's input: the same columns, categoricals as pandas category (FLAML's own encoding of text)."""
    out = X.copy()
    for column in categorical:
        out[column] = out[column].astype(object).astype("category")
    return out


class _Absent:
    """Stands in for an xgboost estimator class: building one fails, naming the missing package."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("xgboost is not installed (benchmarks use FLAML's lgbm learner only)")

    def fit(self, *args: Any, **kwargs: Any) -> None:
        """Never reached: the constructor refuses."""

    def predict(self, *args: Any, **kwargs: Any) -> None:
        """Never reached: the constructor refuses."""

    def predict_proba(self, *args: Any, **kwargs: Any) -> None:
        """Never reached: the constructor refuses."""


def import_flaml_automl() -> ModuleType:
    """flaml.automl; where xgboost is absent, a placeholder module stands in for it.

    FLAML 2.7's AutoML imports xgboost at load time only to read its version for its XGBoost learners,
    which this benchmark never uses (estimator_list=["lgbm"]). The lock's `bench` extra holds flaml
    without its `automl` extra (that would add xgboost and, on Linux, a ~200 MB CUDA NCCL wheel), so
    the placeholder (version "0", estimator classes that refuse to build) lets AutoML load; any use of
    xgboost fails loudly.
    """
    if "xgboost" not in sys.modules and importlib.util.find_spec("xgboost") is None:
        placeholder = ModuleType("xgboost")
        placeholder.__version__ = "0"  # type: ignore[attr-defined]
        for name in ("XGBClassifier", "XGBRegressor"):
            setattr(placeholder, name, type(name, (_Absent,), {"__doc__": "xgboost is not installed."}))
        sys.modules["xgboost"] = placeholder
    return importlib.import_module("flaml.automl")


def run_flaml(data: Data, budget: float, seed: int, threads: int) -> dict[str, Any]:
    """FLAML AutoML, LightGBM only, on train + valid with the same budget, metric, seed and threads."""
    automl_module = import_flaml_automl()

    X_full, y_full = data.full
    categorical = data.dataset.categorical
    regression = data.dataset.task == "regression"
    automl = automl_module.AutoML()
    started = time.perf_counter()
    automl.fit(
        X_train=flaml_frame(X_full, categorical),
        y_train=y_full,
        task="regression" if regression else "classification",
        metric=data.metric,
        estimator_list=["lgbm"],
        time_budget=budget,
        seed=seed,
        n_jobs=threads,
        verbose=0,
    )
    wall = time.perf_counter() - started
    X_test = flaml_frame(data.X_test, categorical)
    if regression:
        scores = np.asarray(automl.predict(X_test), dtype=float)
    elif data.dataset.task == "binary":
        scores = np.asarray(automl.predict_proba(X_test))[:, 1]
    else:
        scores = np.asarray(automl.predict_proba(X_test))
    config = automl.best_config or {}
    return {
        "test": score(data.metric, data.y_test, scores),
        "wall_seconds": wall,
        "trials": int(sum(getattr(automl, "_iter_per_learner", {}).values())),
        "improvements": len(getattr(automl, "config_history", {}) or {}),
        "cv": (1.0 - automl.best_loss) if automl.best_loss is not None else None,
        "threads": threads,
        "best": {k: (float(v) if isinstance(v, np.floating) else v) for k, v in config.items()},
    }


def run_autogluon(data: Data, budget: float, seed: int, threads: int, models: str, python: Path) -> dict[str, Any]:
    """AutoGluon in .venv-peers on train + valid (its own holdout); its test scores scored with our metric code."""
    X_full, y_full = data.full
    label = data.dataset.target
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        folder = Path(tmp)
        X_full.assign(**{label: y_full}).to_parquet(folder / "train.parquet")
        data.X_test.to_parquet(folder / "test.parquet")
        command = [
            str(python),
            str(PEERS_SCRIPT),
            *("--train", str(folder / "train.parquet"), "--test", str(folder / "test.parquet"), "--label", label),
            *("--problem-type", "regression" if data.dataset.task == "regression" else "binary"),
            *("--metric", data.metric, "--time-limit", f"{budget:g}", "--seed", str(seed)),
            *("--num-cpus", str(threads), "--models", models, "--out", str(folder / "scores.parquet")),
            *("--workdir", str(folder)),
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{PEERS_SCRIPT.name} exited {done.returncode}: {done.stderr[-2000:]}")
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"{PEERS_SCRIPT.name} printed no JSON line; stdout: {done.stdout[-2000:]}")
        summary = json.loads(lines[-1])
        scores = pd.read_parquet(folder / "scores.parquet")["score"].to_numpy(dtype=float)
    return {
        "test": score(data.metric, data.y_test, scores),
        "wall_seconds": summary["fit_seconds"] + summary["predict_seconds"],
        "process_seconds": wall,
        "trials": len(summary["models"]),
        "models": summary["models"],
        "best": summary["best"],
        "cv": summary["val_score"],
        "threads": threads,
        "autogluon": summary["autogluon"],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """--quick (tiny budgets on sampled rows: a smoke test), --repeats, --budgets, --cold-budget, --datasets."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s budget, 3,000 sampled rows, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0, 30.0, 60.0])
    parser.add_argument(
        "--cold-budget",
        type=float,
        default=90.0,
        help="one more budget: the wall of our cold default `retrain run` (default 90 s; 0: none)",
    )
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=PEERS_PYTHON,
        help="the peers env's python for AutoGluon (`make bench-peers-env`); missing: no AutoGluon columns",
    )
    parser.add_argument("--no-autogluon", action="store_true", help="ours and FLAML only")
    parser.add_argument("--results-name", default=NAME, help="write benchmarks/results/NAME.json/.md instead")
    parser.add_argument(
        "--tools", nargs="+", choices=sorted(LABELS), help="run only these (default: ours, FLAML, AutoGluon x2)"
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--from-json", type=Path, help="re-summarise a results JSON (no measurement)")
    return parser.parse_args(argv)


def _median(cells: list[dict[str, Any]], tool: str, key: str) -> float | None:
    """Median of `key` over the cells where `tool` ran and succeeded (None when it never did)."""
    values = [c[tool][key] for c in cells if tool in c and "error" not in c[tool]]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    """A number in `spec`, or '-' when the tool did not run."""
    return "-" if value is None else format(value, spec)


def summarise(cells: list[dict[str, Any]], metric_of: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    """Medians per (dataset, budget) and the Markdown section (both metrics here are higher-is-better)."""
    rows: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    peers = [t for t in LABELS if t not in ("ours", "ours_cold") and any(t in c for c in cells)]
    ours_cols = [t for t in ("ours", "ours_cold") if any(t in c for c in cells)]
    for name, budget in sorted({(c["dataset"], c["budget"]) for c in cells}):
        same = [c for c in cells if c["dataset"] == name and c["budget"] == budget]
        test = {t: _median(same, t, "test") for t in [*ours_cols, *peers]}
        wall = {t: _median(same, t, "wall_seconds") for t in [*ours_cols, *peers]}
        trials = {t: _median(same, t, "trials") for t in [*ours_cols, *peers]}
        # FLAML's best result at any budget of the same repeat: a check that does not depend on walls matching
        flaml_any = (
            statistics.median(
                max(
                    o["flaml"]["test"]
                    for o in cells
                    if o["dataset"] == name and o["repeat"] == c["repeat"] and "flaml" in o
                )
                for c in same
                if "flaml" in c
            )
            if any("flaml" in c for c in same)
            else None
        )
        loads = [v for c in same for v in c.get("load", [])]
        ours = test.get("ours")
        beaten = [t for t in peers if test[t] is not None and ours is not None and test[t] > ours]
        passed = ours is not None and not beaten
        rows.append(
            {
                "dataset": name,
                "budget": budget,
                **{t: test[t] for t in [*ours_cols, *peers]},
                **{f"{t}_wall": wall[t] for t in [*ours_cols, *peers]},
                "flaml_best_any_budget": flaml_any,
                "repeats": len(same),
                "load": [min(loads), max(loads)] if loads else None,
                "beaten_by": beaten,
                "passed": passed,
            }
        )
        table.append(
            [
                name,
                f"{budget:g} s",
                f"test {metric_of[name]}",
                *(_fmt(test[t], ".4f") for t in [*ours_cols, *peers]),
                *(_fmt(None if test[t] is None or ours is None else ours - test[t], "+.4f") for t in peers),
                " / ".join(_fmt(wall[t], ".0f") for t in [*ours_cols, *peers]),
                " / ".join(_fmt(trials[t], "g") for t in [*ours_cols, *peers]),
                f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-",
                len(same),
                ("PASS" if passed else "MISS (" + ", ".join(LABELS[t] for t in beaten) + ")") if peers else "-",
            ]
        )
    names = [LABELS[t] for t in [*ours_cols, *peers]]
    header = [
        "dataset",
        "budget",
        "metric",
        *names,
        *(f"ours - {LABELS[t]}" for t in peers),
        "wall s " + " / ".join(names),
        "trials (AG: models) " + " / ".join(names),
        "load (1 min)",
        "repeats",
        "ours >= every peer",
    ]
    text = "## Tuning quality vs time: the pipeline's tuned LightGBM vs FLAML and AutoGluon\n\n"
    text += markdown_table(header, table) + "\n"
    return rows, text


def tools_to_run(args: argparse.Namespace) -> list[str]:
    """ours and FLAML always; the AutoGluon pair when the peers env exists (else a warning says how to make it)."""
    if args.tools:
        missing = [t for t in args.tools if t in AUTOGLUON and not args.peers_python.exists()]
        if missing:
            raise SystemExit(f"--tools {' '.join(missing)} needs {args.peers_python} (make bench-peers-env)")
        return list(args.tools)
    tools = ["ours", "flaml"]
    if args.no_autogluon:
        return tools
    if not args.peers_python.exists():
        logger.warning("%s does not exist: no AutoGluon columns (make bench-peers-env)", args.peers_python)
        return tools
    return [*tools, *AUTOGLUON]


def run_tool(tool: str, d: Data, budget: float, seed: int, python: Path) -> dict[str, Any]:
    """One tool on one dataset and budget; an AutoGluon failure is recorded, not raised (the others still run)."""
    threads = ours_threads(d)
    if tool in ("ours", "ours_cold"):
        return run_ours(d, budget, seed, warm=tool == "ours")
    if tool == "flaml":
        return run_flaml(d, budget, seed, threads)
    try:
        return run_autogluon(d, budget, seed, threads, AUTOGLUON[tool], python)
    except RuntimeError as exc:
        logger.error("%s %s %gs failed: %s", d.name, tool, budget, exc)
        return {"error": str(exc)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Prepare both datasets, run every (repeat, budget, dataset, tool) cell interleaved, write the results."""
    args = parse_args(argv)
    setup_logging()
    if args.from_json is not None:
        return write(json.loads(args.from_json.read_text()))
    budgets = [3.0] if args.quick else args.budgets + ([args.cold_budget] if args.cold_budget > 0 else [])
    repeats = 1 if args.quick else args.repeats
    sample = 3000 if args.quick else None
    tools = tools_to_run(args)
    info = machine_info()
    data = {name: prepare(name, DATASETS[name], sample) for name in args.datasets}
    cells: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for repeat in range(repeats):
        for b, budget in enumerate(budgets):
            for k, (name, d) in enumerate(data.items()):
                seed = d.params.seed + repeat
                cell: dict[str, Any] = {"dataset": name, "budget": budget, "repeat": repeat, "seed": seed}
                # who goes first rotates across datasets, budgets and repeats
                shift = (repeat + b + k) % len(tools)
                order = tools[shift:] + tools[:shift]
                load = [os.getloadavg()[0]]
                for tool in order:
                    cell[tool] = run_tool(tool, d, budget, seed, args.peers_python)
                    load.append(os.getloadavg()[0])
                    if "error" not in cell[tool]:
                        logger.info(
                            "%s %gs repeat %d %s: test %s %.4f in %.1fs (%d trials), load %.1f",
                            name,
                            budget,
                            repeat,
                            tool,
                            d.metric,
                            cell[tool]["test"],
                            cell[tool]["wall_seconds"],
                            cell[tool]["trials"],
                            load[-1],
                        )
                cell["order"] = order
                cell["load"] = load
                cells.append(cell)
                complete = len(cells) == repeats * len(budgets) * len(data)
                results = report(cells, data, info, args.quick, budgets, repeats, sample, complete, args.results_name)
    return results


def report(
    cells: list[dict[str, Any]],
    data: dict[str, Data],
    info: dict[str, Any],
    quick: bool,
    budgets: list[float],
    repeats: int,
    sample: int | None,
    complete: bool,
    name: str = NAME,
) -> dict[str, Any]:
    """Write the results of the cells so far (after every cell: a long run cut short keeps what it measured)."""
    results = {
        "benchmark": name,
        "settings": {
            "budgets": budgets,
            "repeats": repeats,
            "quick": quick,
            "sample_rows": sample,
            "datasets": {n: DATASETS[n] for n in data},
        },
        "complete": complete,
        "machine": info,
        "load_average_now": list(os.getloadavg()),
        "metrics": {n: d.metric for n, d in data.items()},
        "rows": {n: {"train": len(d.X_train), "valid": len(d.X_valid), "test": len(d.X_test)} for n, d in data.items()},
        "cells": cells,
    }
    return write(results)


def write(results: dict[str, Any]) -> dict[str, Any]:
    """Summarise the cells of `results` into the Markdown section and write both files."""
    settings, info, cells = results["settings"], results["machine"], results["cells"]
    metrics = results.get("metrics") or {
        n: load_params(ROOT / f).evaluate.metric for n, f in settings["datasets"].items()
    }
    rows, text = summarise(cells, metrics)
    results["medians"] = rows
    text += (
        "\nSame train / valid / test rows (the pipeline's split stage, in a temp clone) for every tool. Ours: "
        "`retrain.models.tuning.tune` for lightgbm as the candidates stage configures it, `timeout_seconds` = budget, "
        "no trial cap, then the stage's refit on train + valid. FLAML 2.7 `AutoML.fit` on train + valid, "
        "`estimator_list=['lgbm']`, `time_budget` = budget, same metric, seed (params seed + repeat) and threads "
        "(its own holdout, then a retrain on all rows). AutoGluon 1.6.3 (in .venv-peers, `make bench-peers-env`: "
        "it needs pandas < 2.4) `TabularPredictor.fit` on train + valid (its own holdout: medium_quality does not "
        "bag or refit on all rows), `presets='medium_quality'`, `time_limit` = budget, same metric, threads "
        "(`num_cpus`) and seed (its holdout split; its models keep their own seed 0): 'AG medium' is the preset's "
        "default model list as installed (no torch: LightGBM x3, CatBoost, XGBoost, RandomForest x2, ExtraTrees x2 "
        "+ weighted ensemble, as many as the budget allows), 'AG GBM' its LightGBM entries only (+ ensemble). "
        "Wall = search + final fit (AutoGluon: fit + predict, not its process start, import and data load: "
        "10-17 s more under load; in the JSON). "
        "Our search stops a trial at the budget only once one trial has completed, so when the first trial "
        "(3 CV folds, early-stopped) takes longer than the budget, ours overruns it; AutoGluon also overruns "
        "its time_limit under load. 'trials' for AutoGluon counts the models it trained. 'load' is the "
        "1-minute load average before and after each tool in the cells (min-max). The last budget is our cold "
        "default run's wall (--cold-budget). Medians of the repeats, cells interleaved with rotating tool "
        f"order; {load_note(info['load_average'][0], info['cpu_count'])} (at the start)"
        + (f", {results['load_average_now'][0]:.1f} at the end" if results.get("load_average_now") else "")
        + ".\n"
    )
    for note in results.get("notes") or []:
        text += f"\n- {note}"
    if results.get("notes"):
        text += "\n"
    expected = settings["repeats"] * len(settings["budgets"]) * len(settings["datasets"])
    if not results.get("complete", len(cells) == expected):
        text += f"\n_Incomplete: {len(cells)} of {expected} cells measured._\n"
    if settings["quick"]:
        text = text.replace("## Tuning", "## (quick smoke run, not a measurement) Tuning", 1)
    write_results(results.get("benchmark", NAME), results, text)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
