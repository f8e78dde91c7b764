"""Leaner default models (issue 18, item 4): the warm-started search and the refit's learning rate chosen on valid.

`python -m benchmarks.refit [--repeats 1] [--quick]`. A temp clone runs the pipeline's ingest -> validate -> split
on Adult (params.yaml), then, per repeat (seed = params seed + repeat), in this process:

- the LightGBM search as the candidates stage configures it (space, fixed params, monotone constraints, folds,
  early stopping, pruning; no clock), twice: **cold** (no warm start, 14 trials: the default before issue 18)
  and **warm** (params.yaml: its `warm_start` as trial 0, `candidates.n_trials` trials). Wall and CPU seconds
  (this process: user + system), best CV AUC and whether the best params are the same;
- from the warm search's best params, one train-only refit per learning-rate divisor d (learning_rate / d,
  d x the rounds; `choose_refit` with tolerance 0 so every d is scored on valid), then each d's train + valid
  refit scored on test (test is reported only: nothing is chosen by it). The row params.yaml's rule keeps
  (`refit_learning_rate_divisors`, `refit_tolerance`) is marked.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from benchmarks._runs import load_note, machine_info, machine_line, markdown_table, setup_logging, write_results
from benchmarks.tuning import Data, prepare
from retrain.metrics import score
from retrain.models.estimators import monotone_params, pipeline_scores
from retrain.models.tuning import choose_refit, fit_model, tune, within

logger = logging.getLogger("benchmarks.refit")

DIVISORS = (0.5, 1.0, 1.5, 2.0, 3.0)
"""Learning-rate divisors scored on valid (and, for the report, on test)."""
COLD_TRIALS = 14
"""The LightGBM trial count of params.yaml before issue 18 (no warm start)."""
SEARCH_HEADERS = ("seed", "search", "trials", "best CV AUC", "wall s", "CPU s", "same best params")
REFIT_HEADERS = ("seed", "d", "trees", "learning rate", "valid AUC", "test AUC", "final fit CPU s", "predict CPU s")


def cpu() -> float:
    """CPU seconds of this process (user + system): less sensitive to a shared machine than the wall."""
    times = os.times()
    return times.user + times.system


def search(data: Data, seed: int, warm: bool) -> dict[str, Any]:
    """The candidates stage's LightGBM search, cold (14 trials, no warm start) or warm (params.yaml), unclocked."""
    cands, dataset = data.params.candidates, data.dataset
    cfg = cands.family("lightgbm")
    fixed = {**cfg.fixed, **monotone_params("lightgbm", cands.monotone, dataset.numeric, dataset.categorical)}
    update: dict[str, Any] = {"fixed": fixed, "timeout_seconds": None}
    if not warm:
        update |= {"warm_start": (), "n_trials": COLD_TRIALS}
    cfg = cfg.model_copy(update=update)
    started, began = time.perf_counter(), cpu()
    result = tune("lightgbm", cfg, data.X_train, data.y_train, numeric=dataset.numeric,
                  categorical=dataset.categorical, metric=data.metric, n_trials=cands.n_trials,
                  n_folds=cands.cv_folds, seed=seed, task=dataset.task, labels=data.labels)  # fmt: skip
    return {
        "result": result,
        "wall_s": time.perf_counter() - started,
        "cpu_s": cpu() - began,
        "trials": len(result.trials),
        "cv": result.cv_score,
    }


def refits(data: Data, found: dict[str, Any]) -> list[dict[str, Any]]:
    """Every divisor's train-only refit (valid) and train + valid refit (test), with trees and CPU seconds."""
    dataset, result = data.dataset, found["result"]
    fit = dict(numeric=dataset.numeric, categorical=dataset.categorical, task=dataset.task, threads=1)
    n_classes = len(data.labels or []) or 2
    choice = choose_refit("lightgbm", result, data.X_train, data.y_train, data.X_valid, data.y_valid,
                          metric=data.metric, n_classes=n_classes, divisors=DIVISORS, tolerance=0.0, **fit)  # fmt: skip
    X_full, y_full = data.full
    rows = []
    for tried in choice.tried:
        params = result.refit_params(len(X_full), tried["learning_rate_divisor"])
        began = cpu()
        model = fit_model("lightgbm", params, X_full, y_full, **fit)
        fit_cpu = cpu() - began
        began = cpu()
        test = pipeline_scores(model, data.X_test, dataset.task, n_classes)
        rows.append(
            {
                "divisor": tried["learning_rate_divisor"],
                "valid": tried[f"valid_{data.metric}"],
                "trees": params["n_estimators"],
                "learning_rate": params["learning_rate"],
                "test": score(data.metric, data.y_test, test),
                "final_fit_cpu_s": fit_cpu,
                "test_predict_cpu_s": cpu() - began,
            }
        )
    return rows


def kept(rows: list[dict[str, Any]], divisors: tuple[float, ...], tolerance: float) -> float:
    """The divisor params.yaml's rule keeps among `divisors`: fewest trees within the tolerance of the best valid."""
    pool = [r for r in rows if r["divisor"] in divisors]
    best = max(r["valid"] for r in pool)
    return next(r["divisor"] for r in pool if within(r["valid"], best, tolerance, True))


def render(data: dict[str, Any], divisors: tuple[float, ...], tolerance: float) -> str:
    """The section: the searches side by side, then every divisor's refit, the rule's choice marked."""
    repeats, info = data["repeats"], data["machine"]
    load_start, load_end = data["load_start"], data["load_end"]
    for rep in repeats:
        rep["kept"] = kept(rep["refits"], divisors, tolerance)
    search_rows = [
        [rep["seed"], name, rep[name]["trials"], f"{rep[name]['cv']:.5f}", f"{rep[name]['wall_s']:.1f}",
         f"{rep[name]['cpu_s']:.1f}", "yes" if rep["same_best"] else "no"]
        for rep in repeats for name in ("cold", "warm")
    ]  # fmt: skip
    refit_rows = [
        [rep["seed"], f"{row['divisor']:g}" + (" (kept)" if row["divisor"] == rep["kept"] else ""), row["trees"],
         f"{row['learning_rate']:.4f}", f"{row['valid']:.5f}", f"{row['test']:.5f}", f"{row['final_fit_cpu_s']:.1f}",
         f"{row['test_predict_cpu_s']:.2f}"]
        for rep in repeats for row in rep["refits"]
    ]  # fmt: skip
    return "\n".join(
        [
            "## Leaner default models: warm-started search, refit chosen on valid (Adult LightGBM)",
            "",
            "Search (the candidates stage's LightGBM search, no clock): cold = 14 TPE trials, no warm start (the "
            "default before issue 18); warm = params.yaml (`warm_start` as trial 0, `candidates.n_trials` trials).",
            "",
            markdown_table(SEARCH_HEADERS, search_rows),
            "",
            "Refit of the warm search's best params at learning_rate / d with d x the rounds: valid = train-only "
            "refit (what the stage chooses by), test = train + valid refit (reported only). `(kept)`: the row "
            f"params.yaml's rule keeps (divisors {list(divisors)}, relative tolerance {tolerance}).",
            "",
            markdown_table(REFIT_HEADERS, refit_rows),
            "",
            f"{machine_line(info)}. Load average at start {load_start[0]:.1f}, at end {load_end[0]:.1f}; "
            f"{load_note(max(load_start[0], load_end[0]), info['cpu_count'])}."
            + (" **Quick mode (4,000 rows): a smoke test, not results.**" if data.get("quick") else ""),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the repeats, write benchmarks/results/refit.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4,000 sampled rows: a smoke test of the code")
    args = parser.parse_args(argv)
    setup_logging()
    load_start = os.getloadavg()
    data = prepare("adult", "params.yaml", 4000 if args.quick else None)
    lgbm = data.params.candidates.family("lightgbm")
    repeats = []
    for r in range(args.repeats):
        seed = data.params.seed + r
        cold, warm = search(data, seed, warm=False), search(data, seed, warm=True)
        rows = refits(data, warm)
        repeats.append(
            {
                "seed": seed,
                "cold": {k: v for k, v in cold.items() if k != "result"} | {"best": cold["result"].best_params},
                "warm": {k: v for k, v in warm.items() if k != "result"} | {"best": warm["result"].best_params},
                "same_best": cold["result"].best_params == warm["result"].best_params,
                "refits": rows,
            }
        )
    data_out = {"machine": machine_info(), "load_start": load_start, "load_end": os.getloadavg(), "repeats": repeats}
    data_out["quick"] = args.quick
    write_results("refit", data_out, render(data_out, lgbm.refit_learning_rate_divisors, lgbm.refit_tolerance))
    return data_out


if __name__ == "__main__":
    main()
