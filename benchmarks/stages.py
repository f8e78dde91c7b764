"""Where the time goes on a cold default run on Adult, and what Prefect + MLflow cost (issue 7, point 1).

    .venv/bin/python -m benchmarks.stages [--quick] [--repeats 3] [--profile]

Per repeat, in fresh temp clones of the project (cold: no data/raw, no caches, no mlflow.db, a new
PREFECT_HOME): (1) `retrain run --json` as a user runs it; (2) the same stages' compute as plain Python
(`plain_pipeline` below), in a process that imports neither Prefect nor MLflow (checked in sys.modules).
Flow and plain runs are interleaved (the order alternates per repeat). Both sides are whole processes, so
interpreter start and imports are included in both walls. Per stage: wall seconds (the flow's own
per-stage seconds, the plain path's timer) and peak RSS of the process tree, sampled every 0.2 s.

overhead = (flow wall - plain wall) / flow wall (target <= 15 %).

The plain path calls the same retrain/ functions with the same params and data as tasks/*.py, writes the
same stage outputs, and computes what the tasks compute for tracking too (diagnostics, plots, tables,
model card), written to local files instead of MLflow. What it cannot do without MLflow it replaces by
its MLflow-free equivalent: the latency gate times `Predictor.predict_scores` instead of the pyfunc's
Python model, the serving gate loads the model directory with `retrain.models.estimators.load_predictor` in a fresh
`python -I` process instead of `mlflow.pyfunc.load_model`, and promote copies the model directory into
`models/registry/` instead of logging and registering it. Drift is skipped as on any cold run (no champion).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.jsonfile import write_json  # the bytes the stage tasks write (light: no Prefect, no MLflow)

ROOT = Path(__file__).resolve().parent.parent

logger = logging.getLogger("benchmarks.stages")

NAME = "stages"
TARGET_OVERHEAD = 0.15
TARGET_COLD_SECONDS = 90.0
"""Issue 18: a cold default run's flow wall on a quiet machine (flow runs alone: `--sequential`)."""
QUICK = ["ingest.sample_rows=3000", "candidates.n_trials=2", "evaluate.gates.latency.rows=50"]
"""--quick: a seeded 3,000-row sample of each source and 2 trials per family (a smoke test of the code)."""
COMPARED = (
    "data/raw/snapshot.parquet",
    "data/raw/schema.json",
    "data/processed/train.parquet",
    "data/processed/valid.parquet",
    "data/processed/test.parquet",
    "models/baselines/baselines.json",
    "models/validate/report.json",
)
"""Outputs the flow and the plain path must write byte for byte the same (the check that they compute the same)."""


# ---------------------------------------------------------------------------------------------------------------
# The plain-Python path: the stages' compute with the retrain/ functions, no Prefect, no MLflow.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Plain:
    """State of one plain run: the project root, the params, and where tracking artifacts go as local files."""

    root: Path
    params: Any
    artifacts: Path
    _dataset: Any = None
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        """A project path."""
        return self.root / rel

    @property
    def dataset(self) -> Any:
        """The effective schema, as `StageContext.dataset` resolves it (declared, or ingest's schema.json)."""
        from retrain.data.schema import from_json

        if self._dataset is None:
            declared = self.params.dataset
            if declared.columns is not None and (declared.labels is not None or not declared.is_classification):
                self._dataset = declared
            else:
                self._dataset = from_json(declared, json.loads(self.path("data/raw/schema.json").read_text()))
        return self._dataset

    def artifact_dir(self, *parts: str) -> Path:
        """A local folder standing in for a run's artifact path."""
        path = self.artifacts.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


def plain_ingest(s: Plain) -> None:
    """tasks/ingest.py: read the sources, resolve the schema, write snapshot and schema."""
    from retrain.data import schema
    from retrain.data.ingest import SOURCE_COLUMN, ingest
    from retrain.data.sources import parse_source

    cfg = s.params.ingest
    sources = {"main": parse_source(cfg.source, cfg.query)}
    if cfg.test_source:
        sources["test"] = parse_source(cfg.test_source, cfg.test_query)
    keep = s.params.split.extra_columns
    result = ingest(sources, s.root, cfg, s.params.dataset, s.params.seed, keep=keep)
    snapshot = result.snapshot
    effective = schema.resolve(s.params.dataset, snapshot[snapshot[SOURCE_COLUMN] == "main"], keep=keep)
    out = s.path("data/raw/snapshot.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    snapshot.to_parquet(tmp, index=False)
    tmp.replace(out)
    write_json(s.path("data/raw/schema.json"), schema.to_json(s.params.dataset, effective))
    write_json(s.artifact_dir("ingest") / "sources.json", {"sources": result.provenance})


def plain_version(s: Plain) -> None:
    """tasks/version.py: the snapshot into the DVC cache and pushed to the remote, its md5 recorded."""
    from adapters import dvc_store as dvcstore

    snapshot = s.path("data/raw/snapshot.parquet")
    remote = dvcstore.remote_info(s.root, s.params.version.remote)
    md5 = dvcstore.add_to_cache(s.root, snapshot)
    dvcstore.push(s.root, md5, remote.name)
    record = {
        "path": "data/raw/snapshot.parquet",
        "md5": md5,
        "bytes": snapshot.stat().st_size,
        "remote": {"name": remote.name, "url": remote.portable(s.root)},
    }
    write_json(s.path("data/raw/version.json"), record)


def plain_validate(s: Plain) -> None:
    """tasks/validate.py on a cold run (no champion, so no drift reference): the same gate function, report."""
    import pandas as pd

    from retrain.data.drift import drift_without_reference
    from retrain.data.validate import check_snapshot

    action = s.params.validate_.drift.action
    reference = "off" if action == "off" else "none"  # a cold run: no champion, so no reference snapshot
    drift = drift_without_reference(action, reference) or {}
    snapshot = pd.read_parquet(s.path("data/raw/snapshot.parquet"))
    docs = s.artifact_dir("validate", "data_docs")
    report, _ = check_snapshot(snapshot, s.dataset, s.params, docs, lambda main: drift, reference)
    if not report["success"]:
        raise RuntimeError(f"plain validate: the data gate failed ({report['failed']} checks)")
    write_json(s.path("models/validate/report.json"), report)


def plain_split(s: Plain) -> None:
    """tasks/split.py."""
    import pandas as pd

    from retrain.data.split import split_snapshot

    snapshot = pd.read_parquet(s.path("data/raw/snapshot.parquet"))
    parts = split_snapshot(snapshot, s.params.split, s.dataset, s.params.seed)
    for name, frame in parts.items():
        path = s.path(f"data/processed/{name}.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)


def plain_baselines(s: Plain) -> None:
    """tasks/baselines.py: fit on train, score on valid, write baselines.json (the same retrain function)."""
    import pandas as pd

    from retrain.models.baselines import baselines_record, input_columns

    dataset, params = s.dataset, s.params
    columns = input_columns(dataset, params.baselines)
    train = pd.read_parquet(s.path("data/processed/train.parquet"), columns=columns)
    valid = pd.read_parquet(s.path("data/processed/valid.parquet"), columns=columns)
    record = baselines_record(
        train, valid, dataset, params.baselines, params.evaluate.metric, params.seed, "data/processed/train.parquet"
    )
    write_json(s.path("models/baselines/baselines.json"), record)


@dataclass
class Family:
    """One family's outcome (tasks/candidates.py FamilyOutcome)."""

    result: Any
    train_model: Any
    final_model: Any
    valid_scores: Any
    valid_score: float
    fit_seconds: float
    predict_rows_per_second: float
    final_params: dict[str, Any] | None = None


def plain_fit_family(family: str, d: dict[str, Any], cfg: Any, directory: Path) -> Family:
    """tasks/candidates.py fit_family: search, refit on train (valid score), refit on train + valid, save."""
    import numpy as np
    import pandas as pd

    from retrain.models.estimators import monotone_params, save_model
    from retrain.models.tuning import choose_refit, fit_model, plan_threads, tune

    dataset = d["dataset"]
    family_cfg = getattr(cfg, family)
    constraints = monotone_params(family, cfg.monotone, dataset.numeric, dataset.categorical)
    if constraints:
        family_cfg = family_cfg.model_copy(update={"fixed": {**family_cfg.fixed, **constraints}})
    result = tune(
        family,
        family_cfg,
        d["X_train"],
        d["y_train"],
        numeric=dataset.numeric,
        categorical=dataset.categorical,
        metric=d["metric"],
        n_trials=cfg.n_trials,
        n_folds=cfg.cv_folds,
        seed=d["seed"],
        task=dataset.task,
        labels=d["labels"],
        groups=d["groups"],
        ordered=d["ordered"],
        parallel_trials=cfg.parallel_trials,
        storage=d["storage"],
        study_name=f"{family}-plain",
    )
    _, threads = plan_threads(result.threads, 1)
    fit = dict(numeric=dataset.numeric, categorical=dataset.categorical, task=dataset.task, threads=threads)
    kept = choose_refit(
        family,
        result,
        d["X_train"],
        d["y_train"],
        d["X_valid"],
        d["y_valid"],
        metric=d["metric"],
        n_classes=d["n_classes"],
        divisors=family_cfg.refit_learning_rate_divisors,
        tolerance=family_cfg.refit_tolerance,
        **fit,
    )
    train_model, valid_scores, fit_seconds = kept.model, kept.valid_scores, kept.fit_seconds
    rate = len(d["X_valid"]) / max(kept.predict_seconds, 1e-9)
    X_full = pd.concat([d["X_train"], d["X_valid"]], ignore_index=True)
    y_full = np.concatenate([d["y_train"], d["y_valid"]])
    final_params = result.refit_params(len(X_full))
    final_model = fit_model(family, final_params, X_full, y_full, **fit)
    save_model(final_model, family, dataset.features, directory, task=dataset.task, labels=d["labels"])
    return Family(result, train_model, final_model, valid_scores, kept.valid_score, fit_seconds, rate, final_params)


def plain_fit_stacking(bases: dict[str, Family], d: dict[str, Any], cfg: Any, directory: Path) -> Family:
    """tasks/candidates.py fit_stacking: the meta-learner on the bases' out-of-fold scores."""
    import numpy as np

    from retrain.metrics import get_metric, score
    from retrain.models.estimators import fit_meta, save_stacking, stack_features
    from retrain.models.tuning import TuningResult, make_folds

    task, names, y_train = d["dataset"].task, list(bases), d["y_train"]
    started = time.perf_counter()
    rows = np.logical_and.reduce([b.result.oof_rows for b in bases.values()])
    oof = [bases[n].result.oof for n in names]
    features = stack_features(oof, task)
    params = cfg.stacking.fixed
    folds = make_folds(
        y_train, cfg.cv_folds, d["seed"], task=task, groups=d["groups"], ordered=d["ordered"], labels=d["labels"]
    )
    fold_scores = []
    for train_idx, valid_idx in folds:
        fit_rows = train_idx[rows[train_idx]]
        if len(np.unique(y_train[fit_rows])) < 2:
            continue
        meta = fit_meta(names, [f[fit_rows] for f in oof], y_train[fit_rows], task, params)
        fold_scores.append(
            score(d["metric"], y_train[valid_idx], meta.predict(features[valid_idx], d["n_classes"] or 2))
        )
    cv = float(np.mean(fold_scores)) if fold_scores else math.nan
    meta = fit_meta(names, [f[rows] for f in oof], y_train[rows], task, params)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    valid_scores = meta.predict(stack_features([bases[n].valid_scores for n in names], task), d["n_classes"] or 2)
    base_seconds = sum(len(d["X_valid"]) / b.predict_rows_per_second for b in bases.values())
    rate = len(d["X_valid"]) / max(time.perf_counter() - started + base_seconds, 1e-9)
    save_stacking(
        {n: b.final_model for n, b in bases.items()}, meta, d["dataset"].features, directory, labels=d["labels"]
    )
    best = {"meta": params, "bases": names, "coef": [list(r) for r in meta.coef], "intercept": list(meta.intercept)}
    result = TuningResult("stacking", best, cv, [], seconds, get_metric(d["metric"]).optuna_direction)
    return Family(result, None, None, valid_scores, score(d["metric"], d["y_valid"], valid_scores), seconds, rate)


def plain_diagnostics(s: Plain, family: str, model: Any, d: dict[str, Any], out: Path, valid_scores: Any) -> None:
    """adapters/mlflow_tracking.py log_candidate_diagnostics: the same function, its results written as local files."""
    from retrain.evaluation.diagnostics import candidate_diagnostics

    found = candidate_diagnostics(
        family,
        model,
        d["X_train"],
        d["y_train"],
        d["X_valid"],
        d["y_valid"],
        task=d["dataset"].task,
        features=d["dataset"].features,
        labels=d["labels"],
        metric=d["metric"],
        seed=s.params.seed,
        valid_scores=valid_scores,
    )
    found.table.to_json(out / "valid_sample.json", orient="split")
    for name, document in found.documents.items():
        write_json(out / f"{name}.json", document)
    for name, figure in found.figures.items():
        figure.savefig(out / f"{name}.png")
    write_json(out / "metrics.json", found.metrics)


def plain_candidates(s: Plain) -> None:
    """tasks/candidates.py: per family search, refits, save, diagnostics; valid scores and summary.json."""
    import pandas as pd

    from retrain.metrics import class_labels, encode_target, get_metric
    from retrain.models.tuning import optuna_storage

    dataset, cfg, metric, split = s.dataset, s.params.candidates, s.params.evaluate.metric, s.params.split
    bases = [f for f in cfg.families if f != "stacking"]
    order = [*bases, *(["stacking"] if "stacking" in cfg.families else [])]
    train = pd.read_parquet(s.path("data/processed/train.parquet"))
    valid = pd.read_parquet(s.path("data/processed/valid.parquet"))
    groups, ordered = None, False
    if split.time_column is not None:
        train, ordered = train.sort_values(split.time_column, kind="stable").reset_index(drop=True), True
    elif split.group_column is not None:
        groups = train[split.group_column]
    labels = class_labels(dataset)
    d = {
        "dataset": dataset,
        "X_train": train[dataset.features],
        "y_train": encode_target(train[dataset.target], dataset),
        "X_valid": valid[dataset.features],
        "y_valid": encode_target(valid[dataset.target], dataset),
        "groups": groups,
        "ordered": ordered,
        "labels": labels,
        "n_classes": len(labels) if labels else 0,
        "metric": metric,
        "seed": s.params.seed,
        "storage": optuna_storage(cfg.storage, s.root),
    }
    outcomes: dict[str, Family] = {}
    for family in order:
        directory = s.path(f"models/candidates/{family}")
        if family == "stacking":
            outcome = plain_fit_stacking({b: outcomes[b] for b in bases}, d, cfg, directory)
        else:
            outcome = plain_fit_family(family, d, cfg, directory)
        outcomes[family] = outcome
        out = s.artifact_dir("candidates", family)
        plain_diagnostics(s, family, outcome.train_model, d, out, outcome.valid_scores)
        write_json(out / "trials.json", {"direction": outcome.result.direction, "trials": outcome.result.trials})
        logger.info("plain candidates: %s CV %.4f, valid %.4f", family, outcome.result.cv_score, outcome.valid_score)
    columns: dict[str, Any] = {}
    for family, o in outcomes.items():
        if o.valid_scores.ndim == 1:
            columns[family] = o.valid_scores
        else:
            columns |= {f"{family}:{k}": o.valid_scores[:, k] for k in range(o.valid_scores.shape[1])}
    pd.DataFrame(columns).to_parquet(s.path("models/candidates/valid_scores.parquet"), index=False)
    summary = {
        family: {
            "cv_score": o.result.cv_score,
            "valid_score": o.valid_score,
            "valid_from": "refit on train only",
            "final_fit": "train + valid",
            "best_params": o.result.best_params,
            "final_params": o.final_params,
            "n_trials": len(o.result.trials),
            "n_pruned": o.result.n_pruned,
        }
        for family, o in outcomes.items()
    }
    write_json(
        s.path("models/candidates/summary.json"),
        {"metric": metric, "direction": get_metric(metric).direction, "task": dataset.task, "families": summary},
    )


def plain_serving_gate(s: Plain, model_dir: Path, example: Any, expected: Any) -> Any:
    """The serving gate's MLflow-free equivalent: a fresh `python -I` process loads the model dir and predicts."""
    import numpy as np

    from retrain.evaluation.gates import GateResult

    child = (
        "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np, pandas as pd; "
        "from retrain.models.estimators import load_predictor, serve_output; "
        "p = load_predictor(__import__('pathlib').Path(sys.argv[2])); "
        "out = serve_output(p, pd.read_parquet(sys.argv[3])); "
        "np.save(sys.argv[4], np.asarray(out, dtype=float), allow_pickle=False)"
    )
    with tempfile.TemporaryDirectory(prefix="plain-serving-") as tmp:
        work = Path(tmp)
        example.to_parquet(work / "example.parquet")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-I", "-c", child, str(s.root), str(model_dir), str(work / "example.parquet"),
             str(work / "out.npy")],
            capture_output=True, text=True, timeout=s.params.evaluate.gates.serving.timeout_seconds, check=False,
        )  # fmt: skip
        seconds = round(time.perf_counter() - started, 2)
        if done.returncode != 0:
            return GateResult("serving", None, 1e-9, False, done.stderr[-300:], None, "lower_is_better", {})
        got = np.load(work / "out.npy")
    want = np.asarray(expected, dtype=float)
    diff = float(np.nanmax(np.abs(got - want))) if got.size else 0.0
    ok = bool(np.allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True))
    reason = f"loads in a fresh process in {seconds} s (max |diff| {diff:.2e})"
    return GateResult("serving", diff, 1e-9, ok, reason, None, "lower_is_better", {"seconds": seconds})


def plain_evaluate(s: Plain) -> None:
    """tasks/evaluate.py on a cold run (no champion): build the shipped model, every gate, record, model card."""
    import pandas as pd

    from retrain.evaluation.calibration import choose_threshold
    from retrain.evaluation.gates import decide
    from retrain.evaluation.latency import directory_size_mb, latency_gate, single_row_latency_ms
    from retrain.evaluation.modelcard import curves, render_model_card
    from retrain.evaluation.policy import gate_policy
    from retrain.metrics import class_labels, encode_target, get_metric, is_better, score
    from retrain.models.baselines import from_dict
    from retrain.models.calibrator import fit_calibrator
    from retrain.models.estimators import load_predictor, save_calibration, save_confidence, serve_output

    dataset, ecfg, metric = s.dataset, s.params.evaluate, s.params.evaluate.metric
    cfg, task = ecfg.gates, dataset.task
    out_dir = s.path("models/evaluate")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    test = pd.read_parquet(s.path("data/processed/test.parquet"))
    valid = pd.read_parquet(s.path("data/processed/valid.parquet"))
    y_test = encode_target(test[dataset.target], dataset)
    y_valid = encode_target(valid[dataset.target], dataset)
    X_test = test[dataset.features]
    example = valid[dataset.features].head(5)

    summary = json.loads(s.path("models/candidates/summary.json").read_text())
    families = list(summary["families"])
    family = families[0]
    for other in families[1:]:
        if is_better(metric, summary["families"][other]["valid_score"], summary["families"][family]["valid_score"]):
            family = other
    model_dir = s.path("models/evaluate/model")
    shutil.copytree(s.path(f"models/candidates/{family}"), model_dir)
    threshold = None
    calibrated = None
    if cfg.calibration.method is not None or (cfg.confidence.enabled and task != "regression"):
        frame = pd.read_parquet(s.path("models/candidates/valid_scores.parquet"))
        if task == "multiclass":
            cols = sorted((c for c in frame.columns if c.startswith(f"{family}:")), key=lambda c: int(c.split(":")[1]))
            vs = frame[cols].to_numpy()
        else:
            vs = frame[family].to_numpy()
        if cfg.calibration.method is not None:
            calibrator = fit_calibrator(cfg.calibration.method, vs, y_valid, task)
            save_calibration(model_dir, calibrator)
            vs = calibrator.apply(vs)
            calibrated = cfg.calibration.method
        if cfg.confidence.enabled and task != "regression":
            threshold = choose_threshold(y_valid, vs, task=task, cfg=cfg.confidence)
            save_confidence(model_dir, threshold, class_labels(dataset))
    predictor = load_predictor(model_dir)
    scores = predictor.predict_scores(X_test)
    candidate_score = score(metric, y_test, scores)
    baselines = [from_dict(b) for b in json.loads(s.path("models/baselines/baselines.json").read_text())["baselines"]]
    baseline_scores = {b.strategy: score(metric, y_test, b.predict_scores(X_test)) for b in baselines}

    latency: dict[str, float] = {}

    def measure_latency() -> Any:
        """Single rows through the retrain.models.estimators predictor (the pyfunc's Python model needs MLflow)."""
        latency.update(single_row_latency_ms(predictor.predict_scores, X_test, cfg.latency.rows))
        latency["size_mb"] = directory_size_mb(model_dir)
        return latency_gate(latency, latency["size_mb"], cfg=cfg.latency, champion=None)

    context = {
        "candidate_score": candidate_score,
        "baseline_scores": baseline_scores,
        "champion_scores": None,
        "confidence_threshold": threshold,
    }
    gates, extra = gate_policy(
        s.params,
        dataset,
        predictor.predict_scores,
        X_test,
        y_test,
        scores,
        context,
        measure_latency,
        lambda: plain_serving_gate(s, model_dir, example, serve_output(predictor, example)),
    )
    decision, failed = decide(gates)
    from adapters.dvc_store import file_md5

    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    record = {
        "candidate": {
            "family": family,
            "model_dir": "models/evaluate/model",
            "model_md5s": {str(p.relative_to(model_dir)): file_md5(p) for p in files},
        },
        "model_name": s.params.promote.model_name,
        "task": task,
        "metric": metric,
        "direction": get_metric(metric).direction,
        "scores": {"candidate": candidate_score, "baselines": baseline_scores, "champion": None},
        "champion": None,
        "gates": [g.to_dict() for g in gates],
        "decision": decision,
        "failed_gates": failed,
        "calibration": calibrated,
        "confidence_threshold": threshold,
        "curves": curves(y_test, scores, task, class_labels(dataset), cfg.calibration.bins),
        **extra,
        "latency": latency,
    }
    write_json(s.path("models/evaluate/gate_record.json"), record)
    s.path("models/evaluate/model_card.html").write_text(render_model_card(record))
    s.results["evaluate"] = {"family": family, "decision": decision, "failed_gates": failed, "score": candidate_score}


def plain_promote(s: Plain) -> None:
    """promote without a registry: a gated model is copied into models/registry/ and the decision recorded."""
    record = json.loads(s.path("models/evaluate/gate_record.json").read_text())
    version = None
    if record["decision"] == "promote":
        target = s.path("models/registry/1")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(s.path(record["candidate"]["model_dir"]), target)
        version = "1"
    write_json(
        s.path("models/promote/promotion.json"),
        {
            "decision": record["decision"],
            "failed_gates": record["failed_gates"],
            "action": "promoted" if version else "rejected",
            "version": version,
        },
    )


PLAIN_STAGES = {
    "ingest": plain_ingest,
    "version": plain_version,
    "validate": plain_validate,
    "split": plain_split,
    "baselines": plain_baselines,
    "candidates": plain_candidates,
    "evaluate": plain_evaluate,
    "promote": plain_promote,
}


def forbidden_modules() -> list[str]:
    """Prefect or MLflow modules loaded in this process (the plain path must load none)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "mlflow"))


def plain_pipeline(root: Path, overrides: list[str]) -> dict[str, Any]:
    """Every stage's compute in order, timed; fails if Prefect or MLflow got imported along the way."""
    from retrain.config import load_params

    started = time.perf_counter()
    params = load_params(root / "params.yaml", overrides)
    state = Plain(root, params, root / ".plain_artifacts")
    stages = []
    for name in PLAIN_STAGES:  # the DAG's order (flows/dag.py would import Prefect and MLflow)
        stage_started = time.perf_counter()
        PLAIN_STAGES[name](state)
        seconds = time.perf_counter() - stage_started
        stages.append({"name": name, "status": "ran", "seconds": round(seconds, 3)})
        logger.info("stage %-10s %-6s %6.2fs", name, "ran", seconds)
    loaded = forbidden_modules()
    if loaded:
        raise RuntimeError(f"the plain path imported Prefect/MLflow modules: {loaded[:10]}")
    return {
        "stages": stages,
        "seconds": round(time.perf_counter() - started, 3),
        "forbidden_modules_loaded": loaded,
        "evaluate": state.results.get("evaluate"),
    }


# ---------------------------------------------------------------------------------------------------------------
# The measurement: interleaved flow and plain runs in fresh projects.
# ---------------------------------------------------------------------------------------------------------------


def file_md5s(project: Path) -> dict[str, str | None]:
    """md5 of the outputs both paths must write identically."""
    from adapters.dvc_store import file_md5

    return {rel: file_md5(project / rel) if (project / rel).is_file() else None for rel in COMPARED}


def model_summary(project: Path) -> dict[str, Any]:
    """Selected family, decision and trials per family: what the two paths should agree on."""
    record = json.loads((project / "models/evaluate/gate_record.json").read_text())
    summary = json.loads((project / "models/candidates/summary.json").read_text())
    return {
        "family": record["candidate"]["family"],
        "decision": record["decision"],
        "test_score": record["scores"]["candidate"],
        "n_trials": {f: v["n_trials"] for f, v in summary["families"].items()},
        "valid_scores": {f: round(v["valid_score"], 6) for f, v in summary["families"].items()},
    }


def run_flow(overrides: list[str]) -> dict[str, Any]:
    """`retrain run --json` in a fresh clone: process wall, the summary's per-stage seconds, RSS per stage."""
    from benchmarks._runs import project_env, remove_project, run_monitored, temp_project

    project = temp_project("stages-flow")
    try:
        command = [str(project / ".venv/bin/retrain"), "run", "--json", *(a for o in overrides for a in ("--set", o))]
        load = os.getloadavg()[0]
        done = run_monitored(command, project, project_env(project), ok_codes=(0, 3))
        summary = json.loads(done.stdout)
        windows = {w["name"]: w for w in done.stage_windows()}
        first_line = next((t for t, line in done.stderr_lines if "retrain" in line), None)
        return {
            "kind": "flow",
            "load": load,
            "returncode": done.returncode,
            "wall": round(done.wall, 3),
            "cpu_seconds": done.cpu_seconds,
            "in_flow_seconds": summary["seconds"],
            "stages": [{**s, "peak_rss_mb": windows.get(s["name"], {}).get("peak_rss_mb")} for s in summary["stages"]],
            "peak_rss_mb": round(done.peak_rss_mb, 1),
            "first_log_line_at": first_line,
            "decision": summary.get("decision"),
            "outputs": file_md5s(project),
            "model": model_summary(project),
        }
    finally:
        remove_project(project)


def run_plain(overrides: list[str]) -> dict[str, Any]:
    """The plain path in a fresh clone, as its own process (`python -m benchmarks.stages --plain-run DIR`)."""
    from benchmarks._runs import project_env, remove_project, run_monitored, temp_project

    project = temp_project("stages-plain")
    try:
        out = project.parent / "plain.json"
        env = project_env(project)
        command = [
            str(project / ".venv/bin/python"),
            str(Path(__file__).resolve()),
            "--plain-run",
            str(project),
            "--plain-out",
            str(out),
            *(a for o in overrides for a in ("--set", o)),
        ]
        done = run_monitored(command, project, env)
        result = json.loads(out.read_text())
        windows = {w["name"]: w for w in done.stage_windows()}
        return {
            "kind": "plain",
            "returncode": done.returncode,
            "wall": round(done.wall, 3),
            "cpu_seconds": done.cpu_seconds,
            "in_process_seconds": result["seconds"],
            "stages": [{**s, "peak_rss_mb": windows.get(s["name"], {}).get("peak_rss_mb")} for s in result["stages"]],
            "peak_rss_mb": round(done.peak_rss_mb, 1),
            "forbidden_modules_loaded": result["forbidden_modules_loaded"],
            "retrain_file": result.get("retrain_file"),
            "outputs": file_md5s(project),
            "model": model_summary(project),
        }
    finally:
        remove_project(project)


def profile_flow(overrides: list[str], out: Path) -> dict[str, Any]:
    """One cold flow run under cProfile (main thread): cumulative seconds of the Prefect / MLflow / DVC calls."""
    from benchmarks._runs import project_env, remove_project, run_monitored, temp_project

    project = temp_project("stages-profile")
    try:
        prof = project.parent / "flow.prof"
        code = (
            "import cProfile, sys\n"
            f"sys.argv = ['retrain', 'run', '--json'] + {[a for o in overrides for a in ('--set', o)]!r}\n"
            "from flows.cli import main\n"
            "p = cProfile.Profile(); p.enable()\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"finally:\n    p.disable(); p.dump_stats({str(prof)!r})\n"
        )
        done = run_monitored([str(project / ".venv/bin/python"), "-c", code], project, project_env(project))
        shutil.copy(prof, out)
        return {"wall": round(done.wall, 3), "profile": str(out), "summary": profile_summary(out)}
    finally:
        remove_project(project)


PROFILE_GROUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "CLI main (whole process after imports of flows.cli)": (("flows/cli.py", "main"),),
    "retrain_flow body": (("flows/training.py", "retrain_flow"),),
    "run_in_flow (Prefect task + cache + stage)": (("engine/runner.py", "run_in_flow"),),
    "stage functions (tasks/<stage>.py run)": tuple(
        (f"tasks/{n}.py", "run")
        for n in ("ingest", "version", "validate", "split", "baselines", "candidates", "evaluate", "promote")
    ),
    "cache keys (StageContext.cache_key)": (("engine/context.py", "cache_key"),),
    "DVC cache of outputs (cache_outputs)": (("engine/runner.py", "cache_outputs"),),
    "PipelineRun.start (lock, recovery, MLflow parent run)": (("engine/pipeline.py", "start"),),
    "PipelineRun.finish": (("engine/pipeline.py", "finish"),),
    "dvc.lock commit (record_lineage)": (("engine/pipeline.py", "record_lineage"),),
    "mlflow start_run (stage + family runs)": (("mlflow/tracking/fluent.py", "start_run"),),
    "mlflow end_run": (("mlflow/tracking/fluent.py", "end_run"),),
    "mlflow artifacts (log_artifact(s), log_dict, log_figure, log_table)": tuple(
        ("mlflow/tracking/fluent.py", f)
        for f in ("log_artifact", "log_artifacts", "log_dict", "log_figure", "log_table", "log_text")
    ),
    "mlflow metrics / params / tags": tuple(
        ("mlflow/tracking/fluent.py", f)
        for f in ("log_metrics", "log_metric", "log_params", "log_param", "set_tags", "set_tag")
    ),
    "mlflow MlflowClient.log_batch": (("mlflow/tracking/client.py", "log_batch"),),
    "log_candidate_diagnostics (compute + logging)": (("adapters/mlflow_tracking.py", "log_candidate_diagnostics"),),
    "serving gate (save_model + fresh process)": (("adapters/serving_check.py", "serving_gate"),),
    "mlflow.pyfunc.log_model (promote)": (("mlflow/pyfunc/__init__.py", "log_model"),),
    "mlflow register_model (promote)": (("mlflow/tracking/_model_registry/fluent.py", "register_model"),),
    "ensure_experiment (creates mlflow.db)": (("engine/context.py", "ensure_experiment"),),
}
"""Functions whose cumulative seconds a profiled flow run reports (summed over the listed file/function pairs)."""


def profile_summary(path: Path) -> dict[str, float]:
    """Cumulative seconds of the PROFILE_GROUPS functions in a cProfile dump (main thread only)."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for label, members in PROFILE_GROUPS.items():
        total = 0.0
        for file_part, func in members:
            total += max(
                (
                    cum
                    for (filename, _, name), (_, _, _, cum, _) in stats.items()
                    if file_part in filename and name == func
                ),
                default=0.0,
            )
        out[label] = round(total, 2)
    return out


def measure(repeats: int, quick: bool, profile: bool, side_by_side: bool = True) -> dict[str, Any]:
    """Flow / plain pairs: both at the same time (same machine load), or one after the other in alternating order.

    With `profile`, one more flow run under cProfile runs beside the first pair (it is not part of the ratio).
    """
    from concurrent.futures import ThreadPoolExecutor

    overrides = QUICK if quick else []
    settings = {"repeats": repeats, "quick": quick, "overrides": overrides, "side_by_side": side_by_side}
    runs: list[dict[str, Any]] = []
    data: dict[str, Any] = {"settings": settings, "runs": runs}
    with ThreadPoolExecutor(3) as pool:
        profiled = None
        if profile:
            out = Path(tempfile.gettempdir()) / ("bench_stages_flow_quick.prof" if quick else "bench_stages_flow.prof")
            profiled = pool.submit(profile_flow, overrides, out)
        for repeat in range(repeats):
            order = (run_flow, run_plain) if repeat % 2 == 0 else (run_plain, run_flow)
            logger.info("repeat %d/%d: %s", repeat + 1, repeats, " beside ".join(fn.__name__ for fn in order))
            if side_by_side:
                futures = [pool.submit(guarded, fn, overrides) for fn in order]
                results = [f.result() for f in futures]
            else:
                results = [guarded(fn, overrides) for fn in order]
            for result in results:
                logger.info("repeat %d: %s wall %s s", repeat + 1, result["kind"], result.get("wall", "FAILED"))
                runs.append(result | {"repeat": repeat})
            save_partial(data)
        if profiled is not None:
            try:
                data["profile"] = profiled.result()
            except Exception as exc:  # the profile is extra information, never worth the measurements
                logger.error("profiled flow run failed: %s", str(exc)[-2000:])
            save_partial(data)
    return data


def guarded(fn: Any, overrides: list[str]) -> dict[str, Any]:
    """One run; a failure is recorded (its pair is then left out of the medians) instead of ending the benchmark."""
    try:
        return fn(overrides)
    except Exception as exc:  # a run killed by the machine's load must not lose the other pairs
        logger.error("%s failed: %s", fn.__name__, str(exc)[-2000:])
        return {"kind": "flow" if fn is run_flow else "plain", "error": str(exc)[-4000:]}


def save_partial(data: dict[str, Any]) -> None:
    """The raw runs so far, so a crash later (or --from-json) loses no measurement."""
    path = ROOT / "benchmarks" / "results" / f"{NAME}.partial.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Medians per stage and per side, the overhead ratio (per pair, then median), output equality."""
    from benchmarks._runs import median

    failed = {r["repeat"] for r in data["runs"] if "error" in r}
    flows = [r for r in data["runs"] if r["kind"] == "flow" and r["repeat"] not in failed]
    plains = [r for r in data["runs"] if r["kind"] == "plain" and r["repeat"] not in failed]
    pairs = [(f, p) for f in flows for p in plains if f["repeat"] == p["repeat"]]
    names = [s["name"] for s in flows[0]["stages"]]

    def stage_values(runs: list[dict[str, Any]], name: str, key: str) -> list[float]:
        """One stage's value in each run."""
        return [s[key] for r in runs for s in r["stages"] if s["name"] == name and s.get(key) is not None]

    stages = {
        name: {
            "flow_seconds": median(stage_values(flows, name, "seconds")),
            "plain_seconds": median(stage_values(plains, name, "seconds")),
            "flow_peak_rss_mb": median(stage_values(flows, name, "peak_rss_mb")),
            "plain_peak_rss_mb": median(stage_values(plains, name, "peak_rss_mb")),
        }
        for name in names
    }
    stage_sum = [(sum(s["seconds"] for s in f["stages"]), sum(s["seconds"] for s in p["stages"])) for f, p in pairs]
    return {
        "stages": stages,
        "flow_wall": median([f["wall"] for f in flows]),
        "plain_wall": median([p["wall"] for p in plains]),
        "overhead": median([(f["wall"] - p["wall"]) / f["wall"] for f, p in pairs]),
        "overhead_stages_only": median([(fs - ps) / fs for fs, ps in stage_sum]),
        "overhead_cpu": median(
            [
                (f["cpu_seconds"] - p["cpu_seconds"]) / f["cpu_seconds"]
                for f, p in pairs
                if f.get("cpu_seconds") and p.get("cpu_seconds")
            ]
        ),
        "per_pair_overhead": [round((f["wall"] - p["wall"]) / f["wall"], 4) for f, p in pairs],
        "overhead_outside_stages_seconds": median([f["wall"] - sum(s["seconds"] for s in f["stages"]) for f in flows]),
        "plain_outside_stages_seconds": median([p["wall"] - sum(s["seconds"] for s in p["stages"]) for p in plains]),
        "flow_peak_rss_mb": median([f["peak_rss_mb"] for f in flows]),
        "plain_peak_rss_mb": median([p["peak_rss_mb"] for p in plains]),
        "identical_outputs": all(f["outputs"] == p["outputs"] for f, p in pairs),
        "output_mismatches": sorted(
            {rel for f, p in pairs for rel in f["outputs"] if f["outputs"][rel] != p["outputs"][rel]}
        ),
        "same_model": [(f["model"], p["model"]) for f, p in pairs],
        "plain_loaded_prefect_or_mlflow": any(p["forbidden_modules_loaded"] for p in plains),
        "pairs": len(pairs),
        "failed_repeats": sorted(failed),
        "flow_walls": [f["wall"] for f in flows],
        "flow_test_scores": [f["model"]["test_score"] for f in flows],
        "flow_load": [f.get("load") for f in flows],
    }


def render(data: dict[str, Any], stats: dict[str, Any], info: dict[str, Any]) -> str:
    """The Markdown section: per-stage table, the overhead row with target and PASS/MISS, how it was measured."""
    from benchmarks._runs import load_note, machine_line, markdown_table, status

    rows = []
    for name, s in stats["stages"].items():
        diff = s["flow_seconds"] - s["plain_seconds"]
        rows.append(
            [
                name,
                f"{s['flow_seconds']:.1f}",
                f"{s['plain_seconds']:.1f}",
                f"{diff:+.1f}",
                f"{s['flow_peak_rss_mb']:.0f}",
                f"{s['plain_peak_rss_mb']:.0f}",
                "",
                "",
            ]
        )
    rows.append(
        [
            "**whole process**",
            f"{stats['flow_wall']:.1f}",
            f"{stats['plain_wall']:.1f}",
            f"{stats['flow_wall'] - stats['plain_wall']:+.1f}",
            f"{stats['flow_peak_rss_mb']:.0f}",
            f"{stats['plain_peak_rss_mb']:.0f}",
            "",
            "",
        ]
    )
    rows.append(
        [
            "**orchestration + tracking overhead**",
            "",
            "",
            f"**{stats['overhead'] * 100:.1f} %**",
            "",
            "",
            "≤ 15 %",
            status(stats["overhead"], TARGET_OVERHEAD),
        ]
    )
    settings = data["settings"]
    alone = not settings.get("side_by_side", True)
    walls = stats.get("flow_walls") or []
    if walls:
        rows.append(
            [
                "**cold run, flow wall** (each flow run " + ("alone" if alone else "beside a plain run") + ")",
                f"{stats['flow_wall']:.1f}",
                "",
                ", ".join(f"{w:.1f}" for w in walls),
                "",
                "",
                f"≤ {TARGET_COLD_SECONDS:.0f} s alone",
                status(stats["flow_wall"], TARGET_COLD_SECONDS) if alone else "n/a (side by side)",
            ]
        )
    mode = "quick settings (smoke test, not the measurement)" if settings["quick"] else "default params.yaml"
    pairing = (
        "flow/plain pairs run side by side (both at once, same load)"
        if settings.get("side_by_side")
        else "interleaved flow/plain"
    )
    table = markdown_table(
        ["stage", "flow s", "plain s", "flow - plain s", "flow peak RSS MB", "plain peak RSS MB", "target", ""], rows
    )
    same = "identical" if stats["identical_outputs"] else f"DIFFERENT ({', '.join(stats['output_mismatches'])})"
    lines = [
        "## Where the time goes (cold default run on Adult)",
        "",
        table,
        "",
        f"Medians of {stats['pairs']} {pairing}, {mode}; {machine_line(info)}. Each run is a fresh clone "
        "(no data/raw, caches or mlflow.db; a copy of a Prefect home whose database exists). "
        "*flow* = `retrain run --json` (per-stage seconds "
        "from its summary); *plain* = the same stages' compute with the same retrain/ functions and params in a "
        "process that never imports Prefect or MLflow (`benchmarks/stages.py plain_pipeline`, checked in "
        "sys.modules), writing diagnostics, plots and the model card to local files.",
        "Both walls are whole processes, so interpreter start and imports are included on both sides; "
        f"overhead = (flow wall - plain wall) / flow wall, per pair. Excluding everything outside the stages, "
        f"it is {stats['overhead_stages_only'] * 100:.1f} % of the stage time; outside the stages (process start, "
        f"imports, Prefect's server, MLflow's database, dvc.lock) the flow spends "
        f"{stats['overhead_outside_stages_seconds']:.0f} s, the plain path "
        f"{stats.get('plain_outside_stages_seconds', float('nan')):.0f} s. Snapshot, splits, report and "
        f"baselines were byte-{same} between the two paths.",
        f"Per pair: {', '.join(f'{v * 100:.1f} %' for v in stats.get('per_pair_overhead', []))}"
        + (
            f"; by CPU seconds (user + system of each process tree, less sensitive to the machine's load): "
            f"{stats['overhead_cpu'] * 100:.1f} %. "
            if stats.get("overhead_cpu") == stats.get("overhead_cpu") and stats.get("overhead_cpu") is not None
            else ". "
        )
        + "Peak RSS: the process tree (children included), sampled every 0.2 s, maximum inside each stage's window. "
        + ("Pairs run side by side" if not alone else "Each run alone, flow and plain alternating")
        + f"; {load_note(info['load_average'][0], info['cpu_count'])} (at the start).",
    ]
    scores = stats.get("flow_test_scores") or []
    if scores:
        lines.append(
            "Cold run, flow wall: the flow column's whole-process wall per repeat ("
            + ", ".join(f"{w:.1f} s" for w in walls)
            + "; 1-minute load at each start: "
            + ", ".join("n/a" if x is None else f"{x:.1f}" for x in stats.get("flow_load") or [])
            + f"); the selected model's test score in each: {', '.join(f'{x:.5f}' for x in scores)}."
        )
    if "profile" in data:
        prof = data["profile"]["summary"]
        top = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(prof.items(), key=lambda kv: -kv[1]) if v > 0)
        lines.append(f"Profile of one flow run (cProfile, cumulative, main thread): {top}.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000-row sample, 2 trials per family (smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="flow/plain pairs (default 3)")
    parser.add_argument("--profile", action="store_true", help="also profile one flow run with cProfile")
    parser.add_argument(
        "--sequential", action="store_true", help="run each pair one after the other (default: side by side)"
    )
    parser.add_argument("--from-json", type=Path, help="re-analyse raw runs saved by an earlier run (no measuring)")
    parser.add_argument("--plain-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plain-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure and write benchmarks/results/stages.{json,md}; or (internal) run the plain path in a project."""
    args = parse_args(argv)
    if args.plain_run is not None:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        result = plain_pipeline(args.plain_run.resolve(), args.overrides)
        # relative to the project: fails here if the plain path imported another checkout's retrain
        result["retrain_file"] = str(Path(sys.modules["retrain"].__file__).relative_to(args.plain_run.resolve()))
        args.plain_out.write_text(json.dumps(result, indent=2, default=str))
        return 0
    from benchmarks._runs import machine_info, setup_logging, write_results

    setup_logging()
    info = machine_info()
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        info = data.get("machine") or info
        data = {k: v for k, v in data.items() if k not in ("analysis", "machine", "finished")}
    else:
        data = measure(args.repeats, args.quick, args.profile, side_by_side=not args.sequential)
    stats = analyse(data)
    data |= {"machine": info, "analysis": stats, "finished": machine_info()["date"]}
    write_results(NAME, data, render(data, stats, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
