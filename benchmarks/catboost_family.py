"""Does a CatBoost family pay its way? Test AUC alone and in the stacking, fit cost, install and serving cost.

    PYTHONPATH=DIR .venv/bin/python -m benchmarks.catboost_family [--seeds 42 43] [--configs 3] [--quick]
        [--wheel catboost-1.2.10-cp311-cp311-manylinux2014_x86_64.whl] [--data DATA]
    # or in parts, side by side, then merged (what benchmarks/results/catboost.md was made with):
    ... --part seeds --seeds 42 --configs 1 --out s42.json   ... --part cost --out cost.json
    ... --merge s42.json s43.json cost.json

CatBoost is not a project dependency: install it outside the lock for this measurement
(`pip install --no-deps --target DIR catboost==1.2.10`; its other requirements, but plotly,
are already in requirements.lock) and put that directory on PYTHONPATH.

Adult, the pipeline's own train / valid / test rows (a temp clone runs ingest -> validate -> split, as
benchmarks/tuning.py does; `--data DATA` reads train/valid/test.parquet written by an earlier run instead).
Per seed (CV folds and model seeds follow it):

- lightgbm: the default run's champion config (benchmarks/results/tuning.json, search-time learning rate
  for the folds, the refit's 1,027 trees at learning rate 0.019 on train + valid), out-of-fold scores on
  the candidates stage's folds (`make_folds`) with its early stopping;
- hgb, logreg: tuned by `retrain.models.tuning.tune` exactly as the candidates stage does (params.yaml);
- catboost: a light search (a few configs, native categorical features, early stopping inside each fold,
  the best by CV AUC), refit on train + valid with the folds' mean best rounds scaled like
  `TuningResult.refit_params`;
- stacking: the pipeline's meta-learner (`fit_meta`) on the out-of-fold scores of {lightgbm, hgb, logreg}
  (today's default), of the same plus catboost, and of {lightgbm, catboost}; test scores from the bases'
  train + valid refits.

Every model scores the same test rows; gains over the best single model are given with a paired bootstrap
95 % interval over test rows (the sampling noise of the test set) and across seeds (the training noise).
Install cost: wheel and installed size, import time, model size, single-row latency against the LightGBM
path, and whether a refit gives the same model bytes (thread_count 1 and 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._runs import ROOT, load_note, machine_info, markdown_table, setup_logging, write_results
from retrain.config import load_params
from retrain.metrics import score
from retrain.models.estimators import fit_meta, monotone_params, pipeline_scores, stack_features
from retrain.models.tuning import cv_evaluate, fit_model, make_folds, tune

logger = logging.getLogger("benchmarks.catboost_family")

NAME = "catboost"
CHAMPION = {
    "objective": "binary",
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
    "subsample_freq": 1,
    "num_leaves": 21,
    "min_child_samples": 10,
    "colsample_bytree": 0.4788104211356391,
    "subsample": 0.953888954853668,
    "reg_lambda": 0.002268483988440538,
    "cat_smooth": 45.14740047065674,
    "cat_l2": 3.8390223713444915,
    "min_data_per_group": 146,
}
"""The default run's LightGBM champion (benchmarks/results/tuning.json), without rounds and learning rate."""
CHAMPION_SEARCH = {"learning_rate": 0.03800464539727666, "n_estimators": 3000}
"""Its search-time rounds and rate (the folds early-stop; the refit halves the rate)."""
CHAMPION_REFIT = {"learning_rate": 0.01900232269863833, "n_estimators": 1027}
"""Its train + valid refit: 1,027 trees at learning rate 0.019, test AUC 0.9299."""
CATBOOST_CONFIGS: list[dict[str, Any]] = [
    {"depth": 6, "learning_rate": 0.08},
    {"depth": 5, "learning_rate": 0.1, "l2_leaf_reg": 1.0, "one_hot_max_size": 10},
    {"depth": 8, "learning_rate": 0.06, "l2_leaf_reg": 5.0},
]
"""The light search: CatBoost's defaults at a fixed rate, one shallower, one deeper + more regularised."""
EARLY_STOPPING = 50
BOOTSTRAP = 1000


def read_splits(directory: Path) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """train / valid / test features and encoded target from parquet files holding a `__y` column."""
    out = {}
    for split in ("train", "valid", "test"):
        frame = pd.read_parquet(directory / f"{split}.parquet")
        out[split] = (frame.drop(columns="__y").reset_index(drop=True), frame["__y"].to_numpy())
    return out


def prepare_splits(directory: Path) -> None:
    """Run the pipeline's ingest -> validate -> split in a temp clone and keep its splits as parquet."""
    from benchmarks.tuning import prepare

    data = prepare("adult", "params.yaml", None)
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        X, y = getattr(data, f"X_{split}"), getattr(data, f"y_{split}")
        X.assign(__y=y).to_parquet(directory / f"{split}.parquet")


def catboost_frame(X: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """CatBoost's input: categoricals as str with missing values as their own level, numerics untouched."""
    out = X.copy()
    for column in categorical:
        out[column] = out[column].astype(object).where(out[column].notna(), "__missing__").astype(str)
    return out


def catboost_model(params: dict[str, Any], seed: int, threads: int, categorical: list[str]) -> Any:
    """An unfitted CatBoostClassifier: native categoricals, fixed seed and threads, no files written."""
    import catboost

    return catboost.CatBoostClassifier(
        random_seed=seed,
        thread_count=threads,
        cat_features=categorical,
        allow_writing_files=False,
        verbose=0,
        **params,
    )


def catboost_cv(
    params: dict[str, Any], X: pd.DataFrame, y: np.ndarray, folds: list, seed: int, categorical: list[str]
) -> tuple[float, np.ndarray, list[int], float]:
    """Mean fold AUC, out-of-fold scores, best rounds per fold and CPU seconds, early-stopped in each fold."""
    oof = np.zeros(len(y))
    aucs, rounds = [], []
    cpu = time.process_time()
    for train_idx, valid_idx in folds:
        model = catboost_model({"iterations": 3000, **params}, seed, 1, categorical)
        model.fit(
            X.iloc[train_idx],
            y[train_idx],
            eval_set=(X.iloc[valid_idx], y[valid_idx]),
            early_stopping_rounds=EARLY_STOPPING,
            use_best_model=True,
        )
        oof[valid_idx] = model.predict_proba(X.iloc[valid_idx])[:, 1]
        aucs.append(score("roc_auc", y[valid_idx], oof[valid_idx]))
        rounds.append(int(model.get_best_iteration()) + 1)
    return float(np.mean(aucs)), oof, rounds, time.process_time() - cpu


def weighted_auc(groups: np.ndarray, n_groups: int, y: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC with row weights; `groups` are the rows' ranks among the distinct scores (ties share one)."""
    pos = np.bincount(groups, weights=weights * y, minlength=n_groups)
    neg = np.bincount(groups, weights=weights * (1 - y), minlength=n_groups)
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def bootstrap_gain(y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int) -> dict[str, float]:
    """AUC(a) - AUC(b) on the test rows and its paired bootstrap 95 % interval (resampling test rows)."""
    rng = np.random.default_rng(seed)
    (_, ga), (_, gb) = (np.unique(s, return_inverse=True) for s in (a, b))
    na, nb = int(ga.max()) + 1, int(gb.max()) + 1
    ones = np.ones(len(y))
    gains = []
    for _ in range(BOOTSTRAP):
        w = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(float)
        gains.append(weighted_auc(ga, na, y, w) - weighted_auc(gb, nb, y, w))
    low, high = np.percentile(gains, [2.5, 97.5])
    gain = weighted_auc(ga, na, y, ones) - weighted_auc(gb, nb, y, ones)
    return {"gain": gain, "low": float(low), "high": float(high)}


def one_seed(
    splits: dict[str, tuple[pd.DataFrame, np.ndarray]], seed: int, n_configs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every base and stacking on one seed: test scores, CV, fit seconds; the final models for the cost part."""
    params = load_params(ROOT / "params.yaml")
    cfg, dataset = params.candidates, params.dataset
    numeric, categorical = dataset.numeric, dataset.categorical
    assert numeric is not None and categorical is not None, "params.yaml declares the Adult columns"
    (X_train, y_train), (X_valid, y_valid), (X_test, y_test) = splits["train"], splits["valid"], splits["test"]
    X_full, y_full = pd.concat([X_train, X_valid], ignore_index=True), np.concatenate([y_train, y_valid])
    folds = make_folds(y_train, cfg.cv_folds, seed, task="binary")
    fold_rows = float(np.mean([len(t) for t, _ in folds]))
    fit = dict(numeric=numeric, categorical=categorical, task="binary", threads=1)
    out: dict[str, Any] = {"seed": seed, "models": {}}
    oofs: dict[str, np.ndarray] = {}
    tests: dict[str, np.ndarray] = {}
    finals: dict[str, Any] = {}

    constraints = monotone_params("lightgbm", cfg.monotone, numeric, categorical, task="binary")
    lgb = {**CHAMPION, **constraints, "random_state": seed, "n_jobs": 1}
    cpu = time.process_time()
    (
        cv,
        oofs["lightgbm"],
        _,
    ) = cv_evaluate(
        "lightgbm",
        {**lgb, **CHAMPION_SEARCH},
        X_train,
        y_train,
        folds,
        numeric,
        categorical,
        "roc_auc",
        early_stopping_rounds=cfg.lightgbm.early_stopping_rounds,
    )
    oof_cpu = time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    finals["lightgbm"] = fit_model("lightgbm", {**lgb, **CHAMPION_REFIT}, X_full, y_full, **fit)
    refit = (time.perf_counter() - started, time.process_time() - cpu)
    tests["lightgbm"] = pipeline_scores(finals["lightgbm"], X_test, "binary", 2)
    out["models"]["lightgbm"] = {"cv": cv, "oof_cpu_s": oof_cpu, "refit_wall_s": refit[0], "refit_cpu_s": refit[1]}

    for family in ("hgb", "logreg"):
        family_cfg = cfg.family(family)
        extra = monotone_params(family, cfg.monotone, numeric, categorical, task="binary")
        if extra:
            family_cfg = family_cfg.model_copy(update={"fixed": {**family_cfg.fixed, **extra}})
        cpu = time.process_time()
        result = tune(
            family,
            family_cfg,
            X_train,
            y_train,
            numeric=numeric,
            categorical=categorical,
            metric="roc_auc",
            n_trials=cfg.n_trials,
            n_folds=cfg.cv_folds,
            seed=seed,
            task="binary",
        )
        tune_cpu = time.process_time() - cpu
        assert result.oof is not None, f"{family}: tune kept the best trial's out-of-fold scores"
        oofs[family] = result.oof
        started, cpu = time.perf_counter(), time.process_time()
        finals[family] = fit_model(family, result.refit_params(len(X_full)), X_full, y_full, **fit)
        refit = (time.perf_counter() - started, time.process_time() - cpu)
        tests[family] = pipeline_scores(finals[family], X_test, "binary", 2)
        out["models"][family] = {
            "cv": result.cv_score,
            "tune_cpu_s": tune_cpu,
            "refit_wall_s": refit[0],
            "refit_cpu_s": refit[1],
        }

    Xc_train, Xc_full = catboost_frame(X_train, categorical), catboost_frame(X_full, categorical)
    Xc_test = catboost_frame(X_test, categorical)
    searched = []
    for config in CATBOOST_CONFIGS[:n_configs]:
        cv, oof, rounds, cpu_s = catboost_cv(config, Xc_train, y_train, folds, seed, categorical)
        searched.append({"params": config, "cv": cv, "rounds": rounds, "cpu_s": cpu_s, "oof": oof})
        logger.info("seed %d catboost %s: CV AUC %.5f, rounds %s, %.1f CPU s", seed, config, cv, rounds, cpu_s)
    best = max(searched, key=lambda s: s["cv"])
    oofs["catboost"] = best["oof"]
    iterations = max(1, round(float(np.mean(best["rounds"])) * np.sqrt(len(y_full) / fold_rows)))
    cb_params = {**best["params"], "iterations": iterations}
    started, cpu = time.perf_counter(), time.process_time()
    finals["catboost"] = catboost_model(cb_params, seed, 1, categorical).fit(Xc_full, y_full)
    refit = (time.perf_counter() - started, time.process_time() - cpu)
    tests["catboost"] = finals["catboost"].predict_proba(Xc_test)[:, 1]
    out["models"]["catboost"] = {
        "cv": best["cv"],
        "params": cb_params,
        "search": [{k: v for k, v in s.items() if k != "oof"} for s in searched],
        "search_cpu_s": sum(s["cpu_s"] for s in searched),
        "refit_wall_s": refit[0],
        "refit_cpu_s": refit[1],
    }

    meta_params = cfg.family("stacking").fixed
    for name, bases in {
        "stacking (lightgbm, hgb, logreg)": ["lightgbm", "hgb", "logreg"],
        "stacking (+ catboost)": ["lightgbm", "hgb", "logreg", "catboost"],
        "stacking (lightgbm, catboost)": ["lightgbm", "catboost"],
    }.items():
        meta = fit_meta(bases, [oofs[b] for b in bases], y_train, "binary", meta_params)
        tests[name] = meta.predict(stack_features([tests[b] for b in bases], "binary"), 2)
        cv_scores = meta.predict(stack_features([oofs[b] for b in bases], "binary"), 2)
        out["models"][name] = {"cv_in_sample": score("roc_auc", y_train, cv_scores), "coef": meta.to_dict()}
    for name, scores in tests.items():
        out["models"][name]["test"] = score("roc_auc", y_test, scores)
        logger.info("seed %d %s: test AUC %.5f", seed, name, out["models"][name]["test"])
    out["gains"] = {
        f"{a} - {b}": bootstrap_gain(y_test, tests[a], tests[b], seed)
        for a, b in [
            ("catboost", "lightgbm"),
            ("stacking (+ catboost)", "lightgbm"),
            ("stacking (+ catboost)", "stacking (lightgbm, hgb, logreg)"),
            ("stacking (lightgbm, catboost)", "lightgbm"),
            ("stacking (lightgbm, hgb, logreg)", "lightgbm"),
        ]
    }
    context = {"finals": finals, "cb_params": cb_params, "Xc_full": Xc_full, "y_full": y_full, "X_test": X_test}
    context.update({"Xc_test": Xc_test, "categorical": categorical, "seed": seed})
    return out, context


VOLATILE_INFO = ("model_guid", "train_finish_time")
"""CatBoost's per-fit metadata in `model_info`: a random id and a clock time (everything else repeats)."""


def model_content(path: Path) -> dict[str, Any]:
    """A CatBoost JSON model without the per-fit metadata: what must repeat for deterministic model bytes."""
    model = json.loads(path.read_text())
    model["model_info"] = {k: v for k, v in model.get("model_info", {}).items() if k not in VOLATILE_INFO}
    return model


def fit_walls(ctx: dict[str, Any]) -> dict[str, Any]:
    """The catboost refit on 1 and 2 threads (wall, CPU) and whether the model (bytes; content) repeats."""
    out: dict[str, Any] = {}
    blobs: dict[str, bytes] = {}
    contents: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, threads in (("1 thread", 1), ("1 thread again", 1), ("2 threads", 2)):
            started, cpu = time.perf_counter(), time.process_time()
            model = catboost_model(ctx["cb_params"], ctx["seed"], threads, ctx["categorical"])
            model.fit(ctx["Xc_full"], ctx["y_full"])
            out[label] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}
            path = Path(tmp) / f"{len(blobs)}.cbm"
            model.save_model(str(path))
            blobs[label] = path.read_bytes()
            model.save_model(str(path.with_suffix(".json")), format="json")
            contents[label] = model_content(path.with_suffix(".json"))
            logger.info(
                "catboost refit on %s: %.1f s wall, %.1f s CPU", label, out[label]["wall_s"], out[label]["cpu_s"]
            )
    out["same_bytes_1_thread_rerun"] = blobs["1 thread"] == blobs["1 thread again"]
    out["same_bytes_1_vs_2_threads"] = blobs["1 thread"] == blobs["2 threads"]
    out["same_content_1_thread_rerun"] = contents["1 thread"] == contents["1 thread again"]
    out["same_content_1_vs_2_threads"] = contents["1 thread"] == contents["2 threads"]
    return out


def serving_cost(ctx: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Model size on disk (cbm, json) and single-row predict latency, CatBoost vs the LightGBM pipeline path."""
    from retrain.models.estimators import load_predictor, save_model

    cb_model, lgb_model = ctx["finals"]["catboost"], ctx["finals"]["lightgbm"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_model(lgb_model, "lightgbm", list(ctx["X_test"].columns), Path(tmp) / "lgb", task="binary")
        lgb_predictor = load_predictor(Path(tmp) / "lgb")
        for fmt in ("cbm", "json"):
            path = Path(tmp) / f"model.{fmt}"
            cb_model.save_model(str(path), format=fmt)
            out[f"catboost_{fmt}_mb"] = path.stat().st_size / 1e6
        path = Path(tmp) / "model.txt"
        lgb_model.named_steps["model"].booster_.save_model(str(path))
        out["lightgbm_text_mb"] = path.stat().st_size / 1e6
    rows_cb, rows_lgb = ctx["Xc_test"], ctx["X_test"]

    def timed(call: Any, rows: pd.DataFrame) -> list[float]:
        times = []
        for i in range(repeats):
            row = rows.iloc[[i % len(rows)]]
            started = time.perf_counter()
            call(row)
            times.append((time.perf_counter() - started) * 1000)
        return times

    calls = {
        "catboost predict_proba (DataFrame row)": (lambda r: cb_model.predict_proba(r, thread_count=1), rows_cb),
        "lightgbm load_predictor().predict_scores (the serving path)": (lgb_predictor.predict_scores, rows_lgb),
    }
    for call, rows in calls.values():
        timed(call, rows)  # warm up
    latency = {name: [] for name in calls}
    for _ in range(3):  # interleaved, the machine is shared
        for name, (call, rows) in calls.items():
            latency[name] += timed(call, rows)
    out["single_row_ms"] = {
        name: {"p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99))} for name, t in latency.items()
    }
    return out


def install_cost(wheel: Path | None) -> dict[str, Any]:
    """Wheel and installed size, extra requirements, and `import catboost` time after pandas (3 processes)."""
    import importlib.metadata as md

    import catboost

    package = Path(catboost.__file__).parent
    installed = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    code = (
        "import time, numpy, pandas, sklearn; t = time.perf_counter(); import catboost; print(time.perf_counter() - t)"
    )
    env = {**os.environ}
    imports = [  # fresh processes: import time is what a serving or training process pays once
        float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    requires = md.requires("catboost") or []
    missing = []
    for req in requires:
        if "extra ==" in req:
            continue
        name = req.split(";")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
        lock = (ROOT / "requirements.lock").read_text().lower()
        if f"\n{name.lower()}==" not in lock:
            missing.append(name)
    return {
        "version": catboost.__version__,
        "wheel_mb": wheel.stat().st_size / 1e6 if wheel is not None and wheel.exists() else None,
        "installed_mb": installed / 1e6,
        "requires": requires,
        "not_in_requirements_lock": missing,
        "import_s": imports,
    }


MIN_GAIN = 0.0005
"""The AUC a CatBoost family must add (mean over seeds, and the bootstrap interval above 0 on every seed)."""
COLD_RUN_BUDGET_S = 90.0
"""Issue 18's cold default run budget (flow wall), which the family's fits would have to fit in."""


def verdict(result: dict[str, Any]) -> tuple[bool, str]:
    """Build the family? Only if stacking with catboost beats the best of today's models beyond noise, in budget."""
    seeds = result["seeds"]
    today = ("lightgbm", "stacking (lightgbm, hgb, logreg)")
    best_with = max(
        ("catboost", "stacking (+ catboost)", "stacking (lightgbm, catboost)"),
        key=lambda m: statistics.mean(s["models"][m]["test"] for s in seeds),
    )
    best_today = max(today, key=lambda m: statistics.mean(s["models"][m]["test"] for s in seeds))
    gain = statistics.mean(s["models"][best_with]["test"] - s["models"][best_today]["test"] for s in seeds)
    key = f"{best_with} - {best_today}"
    beyond_noise = all(key in s["gains"] and s["gains"][key]["low"] > 0 for s in seeds)
    cb_cpu = statistics.mean(
        s["models"]["catboost"]["search_cpu_s"] / len(s["models"]["catboost"]["search"])
        + s["models"]["catboost"]["refit_cpu_s"]
        for s in seeds
    )
    pays = gain >= MIN_GAIN and beyond_noise and cb_cpu < COLD_RUN_BUDGET_S / 3
    text = (
        f"**Verdict: {'build' if pays else 'do not add'} the CatBoost family.** Best with CatBoost: {best_with}; "
        f"best today: {best_today}; mean test AUC gain {gain:+.5f} over {len(seeds)} seed(s) (needed: >= "
        f"{MIN_GAIN} with the bootstrap interval above 0 on every seed: {'yes' if beyond_noise else 'no'}). "
        f"CatBoost costs {cb_cpu:.0f} CPU s for one config's 3-fold CV + the refit alone (1 thread), against a "
        f"{COLD_RUN_BUDGET_S:.0f} s budget for the whole cold run in which LightGBM's whole search must also fit."
    )
    return pays, text


HOW = (
    "How: `python -m benchmarks.catboost_family` (catboost installed outside the lock, see benchmarks/README.md). "
    "Rows: the split stage's Adult train / valid / test. Per seed (folds and model seeds follow it): LightGBM is the "
    "default run's champion config (out-of-fold scores on the candidates stage's folds, early-stopped; the "
    "1,027-tree refit on train + valid); hgb and logreg are tuned by `tune` as the candidates stage does; CatBoost "
    "gets native categoricals, early stopping in the same folds and a train + valid refit at the folds' mean best "
    "rounds scaled like `TuningResult.refit_params`; stacking is the pipeline's `fit_meta` on out-of-fold scores. "
    "Test rows score every model; intervals are a paired bootstrap (1,000 resamples of test rows).",
    "",
    "Notes: single-row latency is measured interleaved in one process on the loaded machine: the ratio holds for "
    "that moment, not the absolute numbers (the LightGBM serving path was ~0.6 ms quiet in issue 18, and was being "
    "reworked while this ran). A CatBoost model repeats exactly on a rerun with the same thread_count, except its "
    "`model_guid` and `train_finish_time` (a family would strip them to keep same-bytes determinism); 1 and 2 "
    "threads give different models. The family would also need a train-only refit (the valid score), a third "
    "CatBoost fit, not counted above.",
)
"""The section's method and caveats, after the tables."""


def section(result: dict[str, Any]) -> str:
    """The Markdown section: test AUC per model and seed, gains with intervals, fit and install cost."""
    seeds = result["seeds"]
    names = list(seeds[0]["models"])
    rows = []
    for name in names:
        tests = [s["models"][name]["test"] for s in seeds]
        rows.append([name, *(f"{t:.5f}" for t in tests), f"{statistics.mean(tests):.5f}"])
    lines = [
        "## catboost: does a CatBoost family add AUC, and pay its install cost? (Adult, default split)",
        "",
        load_note(result["load_start"][0], result["machine"]["cpu_count"]) + f" (start {result['load_start']}, "
        f"end {result['load_end']}).",
        "",
        *(
            [
                "Parts run side by side, 1-minute load at start -> end: "
                + "; ".join(f"{p['load_start'][0]:.1f} -> {p['load_end'][0]:.1f}" for p in result["parts"])
                + ".",
                "",
            ]
            if result.get("parts")
            else []
        ),
        verdict(result)[1],
        "",
        markdown_table(["model (test ROC AUC)", *(f"seed {s['seed']}" for s in seeds), "mean"], rows),
        "",
    ]
    gain_rows = []
    for key in seeds[0]["gains"]:
        cells = [
            f"{s['gains'][key]['gain']:+.5f} [{s['gains'][key]['low']:+.4f}, {s['gains'][key]['high']:+.4f}]"
            for s in seeds
        ]
        gain_rows.append([key, *cells])
    lines += [
        "Gain in test AUC, paired bootstrap 95 % interval over test rows:",
        "",
        markdown_table(["difference", *(f"seed {s['seed']}" for s in seeds)], gain_rows),
        "",
    ]
    cb = [s["models"]["catboost"] for s in seeds]
    lgb = [s["models"]["lightgbm"] for s in seeds]
    fit_rows = [
        ["lightgbm champion refit (train + valid, 1,027 trees)", *(f"{m['refit_cpu_s']:.1f}" for m in lgb)],
        ["lightgbm out-of-fold (3 folds, early-stopped)", *(f"{m['oof_cpu_s']:.1f}" for m in lgb)],
        ["catboost light search (3-fold CV per config)", *(f"{m['search_cpu_s']:.1f}" for m in cb)],
        ["catboost refit (train + valid)", *(f"{m['refit_cpu_s']:.1f}" for m in cb)],
    ]
    lines += [
        "CPU seconds (1 thread; wall on the loaded machine is larger):",
        "",
        markdown_table(["fit", *(f"seed {s['seed']}" for s in seeds)], fit_rows),
        "",
        "CatBoost configs (CV AUC, mean best rounds): "
        + "; ".join(
            f"seed {s['seed']}: "
            + ", ".join(
                f"{c['params']} {c['cv']:.5f} / {statistics.mean(c['rounds']):.0f}"
                for c in s["models"]["catboost"]["search"]
            )
            for s in seeds
        ),
        "",
    ]
    cost, walls, inst = result["serving"], result["fit_walls"], result["install"]
    lat = cost["single_row_ms"]
    lines += [
        markdown_table(
            ["cost", "catboost", "lightgbm / today"],
            [
                ["wheel (cp311 manylinux)", f"{inst['wheel_mb']:.0f} MB" if inst["wheel_mb"] else "-", "-"],
                ["installed", f"{inst['installed_mb']:.0f} MB", "-"],
                ["requirements not in requirements.lock", ", ".join(inst["not_in_requirements_lock"]) or "none", "-"],
                ["import (after numpy, pandas, sklearn)", f"{statistics.median(inst['import_s']):.2f} s", "-"],
                [
                    "model on disk",
                    f"{cost['catboost_cbm_mb']:.2f} MB (.cbm), {cost['catboost_json_mb']:.2f} MB (json)",
                    f"{cost['lightgbm_text_mb']:.2f} MB (booster text)",
                ],
                ["single row p50 / p99", *(f"{v['p50']:.2f} / {v['p99']:.2f} ms" for v in lat.values())],
                [
                    "refit wall, 1 / 2 threads",
                    f"{walls['1 thread']['wall_s']:.1f} / {walls['2 threads']['wall_s']:.1f} s",
                    "-",
                ],
                [
                    "same .cbm bytes on refit (1 thread; 1 vs 2 threads)",
                    f"{walls['same_bytes_1_thread_rerun']}; {walls['same_bytes_1_vs_2_threads']}",
                    "-",
                ],
                [
                    "same model without model_guid / train_finish_time (1 thread; 1 vs 2)",
                    f"{walls['same_content_1_thread_rerun']}; {walls['same_content_1_vs_2_threads']}",
                    "-",
                ],
            ],
        ),
        "",
        *HOW,
    ]
    if result.get("quick"):
        lines.insert(2, "**--quick: a smoke test of the code, not a measurement.**\n")
    return "\n".join(lines)


COST_PARAMS = {"depth": 6, "learning_rate": 0.08, "iterations": 694}
"""The cost part's CatBoost: the first config at seed 42's refit rounds (3-fold mean 507, scaled to train + valid)."""


def cost_context(splits: dict[str, tuple[pd.DataFrame, np.ndarray]], seed: int) -> dict[str, Any]:
    """What the cost part measures: the LightGBM champion and a CatBoost refit on train + valid."""
    params = load_params(ROOT / "params.yaml")
    cfg, dataset = params.candidates, params.dataset
    numeric, categorical = dataset.numeric or [], dataset.categorical or []
    (X_train, y_train), (X_valid, y_valid), (X_test, _) = splits["train"], splits["valid"], splits["test"]
    X_full, y_full = pd.concat([X_train, X_valid], ignore_index=True), np.concatenate([y_train, y_valid])
    constraints = monotone_params("lightgbm", cfg.monotone, numeric, categorical, task="binary")
    lgb = {**CHAMPION, **constraints, **CHAMPION_REFIT, "random_state": seed, "n_jobs": 1}
    fit = dict(numeric=numeric, categorical=categorical, task="binary", threads=1)
    Xc_full = catboost_frame(X_full, categorical)
    return {
        "finals": {
            "lightgbm": fit_model("lightgbm", lgb, X_full, y_full, **fit),
            "catboost": catboost_model(COST_PARAMS, seed, 1, categorical).fit(Xc_full, y_full),
        },
        "cb_params": COST_PARAMS,
        "Xc_full": Xc_full,
        "y_full": y_full,
        "X_test": X_test,
        "Xc_test": catboost_frame(X_test, categorical),
        "categorical": categorical,
        "seed": seed,
    }


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result from part files (seeds from each, cost from the one holding it), loads spanning them all."""
    parts = [json.loads(p.read_text()) for p in paths]
    result: dict[str, Any] = {"quick": any(p.get("quick") for p in parts), "seeds": [], "parts": []}
    for part in parts:
        result["seeds"] += part.get("seeds", [])
        result["parts"].append({"load_start": part["load_start"], "load_end": part["load_end"]})
        for key in ("fit_walls", "serving", "install", "machine"):
            if key in part:
                result[key] = part[key]
    result["seeds"].sort(key=lambda s: s["seed"])
    result["load_start"] = max((p["load_start"] for p in parts), key=lambda load: load[0])
    result["load_end"] = max((p["load_end"] for p in parts), key=lambda load: load[0])
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure the seeds and/or the cost part; write a part file, or benchmarks/results/catboost.* (all, merge)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--configs", type=int, default=len(CATBOOST_CONFIGS), help="CatBoost configs searched")
    parser.add_argument("--quick", action="store_true", help="one seed, one CatBoost config")
    parser.add_argument("--part", choices=("all", "seeds", "cost"), default="all")
    parser.add_argument("--out", type=Path, default=None, help="with --part seeds|cost: the part's JSON file")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="part files to merge into catboost.*")
    parser.add_argument("--wheel", type=Path, default=None, help="the downloaded catboost wheel (its size)")
    parser.add_argument("--data", type=Path, default=None, help="train/valid/test.parquet from an earlier run")
    parser.add_argument("--latency-repeats", type=int, default=300)
    parser.add_argument("--sample", type=int, default=None, help="keep this many rows per split (smoke tests)")
    parser.add_argument("--render-only", action="store_true", help="rewrite catboost.md from catboost.json")
    args = parser.parse_args(argv)
    setup_logging()
    if args.render_only or args.merge:
        path = ROOT / "benchmarks" / "results" / f"{NAME}.json"
        result = merge(args.merge) if args.merge else json.loads(path.read_text())
        write_results(NAME, result, section(result))
        return 0
    try:
        import catboost  # noqa: F401
    except ImportError:
        logger.error("catboost is not importable: pip install --no-deps --target DIR catboost==1.2.10; PYTHONPATH=DIR")
        return 2
    result: dict[str, Any] = {"quick": args.quick, "load_start": list(os.getloadavg())}
    data_dir = args.data or Path(tempfile.mkdtemp(prefix="catboost-bench-"))
    if not (data_dir / "train.parquet").exists():
        prepare_splits(data_dir)
    splits = read_splits(data_dir)
    if args.sample is not None:
        splits = {k: (X.iloc[: args.sample].reset_index(drop=True), y[: args.sample]) for k, (X, y) in splits.items()}
    seeds = args.seeds[:1] if args.quick else args.seeds
    context = None
    if args.part in ("all", "seeds"):
        result["seeds"] = []
        for seed in seeds:
            out, ctx = one_seed(splits, seed, 1 if args.quick else args.configs)
            result["seeds"].append(out)
            context = context or ctx
            logger.info("seed %d done: %s", seed, json.dumps({k: v.get("test") for k, v in out["models"].items()}))
    if args.part in ("all", "cost"):
        context = context or cost_context(splits, seeds[0])
        result["fit_walls"] = fit_walls(context)
        result["serving"] = serving_cost(context, args.latency_repeats)
        result["install"] = install_cost(args.wheel)
    result["machine"] = machine_info()
    result["load_end"] = list(os.getloadavg())
    if args.part == "all":
        write_results(NAME, result, section(result))
    else:
        out_path = args.out or Path(tempfile.gettempdir()) / f"catboost-{args.part}.json"
        out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        logger.info("wrote part %s to %s", args.part, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
