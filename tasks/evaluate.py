"""evaluate: build the model as it would ship, run the whole gate policy on test, write one gate record.

The model directory `models/evaluate/model` is the selected candidate plus, when configured, its
calibrator and confidence threshold (both fitted on the valid scores of the family's train-only refit,
never on test). That directory is what every gate scores and what `promote` registers.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from adapters import mlflow_registry as registry
from adapters.jsonfile import read_json, write_json
from adapters.serving_check import serving_gate
from engine.context import StageContext, clear_outputs, finish, stage_run, tree_md5
from engine.stage import Stage
from retrain.catalog import (
    BASELINES,
    CANDIDATES,
    DATASET_KEYS,
    EVALUATE,
    EVALUATED_MODEL,
    GATE_RECORD,
    MODEL_CARD,
    SPLITS,
    VALID_SCORES,
)
from retrain.config import DatasetConfig, GatesConfig
from retrain.errors import DataError
from retrain.evaluation.gates import (
    GateResult,
    decide,
)
from retrain.evaluation.latency import directory_size_mb, latency_gate, single_row_latency_ms
from retrain.metrics import class_labels, encode_target, get_metric, is_better, score
from retrain.models.baselines import from_dict

if TYPE_CHECKING:
    from retrain.models.estimators import Predictor

logger = logging.getLogger(__name__)

EXAMPLE_ROWS = 5
"""Valid rows used as the input example (signature) and by the serving gate."""


def champion_input(ctx: StageContext) -> dict[str, str]:
    """The champion as an input of `evaluate`'s cache key.

    A champion that is one of these very candidates (the previous run promoted it) counts as no
    other champion, so an unchanged rerun stays a cache hit.
    """
    promote = ctx.params.promote
    current = registry.champion(ctx.tracking.tracking_uri, promote.model_name, promote.alias)
    if current is None:
        return {"champion": "none"}
    candidates = ctx.path(CANDIDATES)
    own = {tree_md5(d) for d in candidates.iterdir() if d.is_dir()} if candidates.is_dir() else set()
    shipped = ctx.path(EVALUATED_MODEL)  # what the last evaluate built (candidate + calibration files)
    if shipped.is_dir():
        own.add(tree_md5(shipped))
    return {"champion": "none" if current.get("model_hash") in own else str(current.get("model_hash"))}


def select_candidate(summary: dict[str, Any], metric: str | None = None) -> str:
    """The family with the best validation score in the metric's direction (test is kept for the gates only)."""
    metric = metric or summary.get("metric", "roc_auc")
    families = list(summary["families"])
    best = families[0]
    for family in families[1:]:
        if is_better(metric, summary["families"][family]["valid_score"], summary["families"][best]["valid_score"]):
            best = family
    return best


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, `_ - . / :` and spaces only)."""
    return re.sub(r"[^\w./: -]", "_", "_".join(parts))


def family_valid_scores(path: Path, family: str, task: str) -> np.ndarray:
    """The family's valid scores from its train-only refit, in the shapes of `predict_scores`."""
    frame = pd.read_parquet(path)
    if task == "multiclass":
        columns = [c for c in frame.columns if c.startswith(f"{family}:")]
        return frame[sorted(columns, key=lambda c: int(c.split(":")[1]))].to_numpy()
    return frame[family].to_numpy()


def build_model(ctx: StageContext, family: str, y_valid: np.ndarray, gates: GatesConfig) -> tuple[Path, dict[str, Any]]:
    """Copy the candidate to models/evaluate/model and add its calibrator and confidence threshold."""
    from retrain.evaluation.calibration import choose_threshold
    from retrain.models.calibrator import fit_calibrator
    from retrain.models.estimators import save_calibration, save_confidence

    dataset = ctx.dataset
    target = ctx.path(EVALUATED_MODEL)
    shutil.copytree(ctx.path(f"{CANDIDATES}/{family}"), target)
    info: dict[str, Any] = {"calibration": None, "confidence_threshold": None}
    needs_valid = gates.calibration.method is not None or (gates.confidence.enabled and dataset.task != "regression")
    if not needs_valid:
        return target, info
    valid = family_valid_scores(ctx.path(VALID_SCORES), family, dataset.task)
    if gates.calibration.method is not None:
        calibrator = fit_calibrator(gates.calibration.method, valid, y_valid, dataset.task)
        save_calibration(target, calibrator)
        valid = calibrator.apply(valid)
        info["calibration"] = gates.calibration.method
        logger.info("evaluate: %s calibrated on valid (%s)", family, gates.calibration.method)
    if gates.confidence.enabled and dataset.task != "regression":
        threshold = choose_threshold(y_valid, valid, task=dataset.task, cfg=gates.confidence)
        save_confidence(target, threshold, class_labels(dataset))
        info["confidence_threshold"] = threshold
    return target, info


def champion_record(tracking_uri: str, champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """The champion's own gate record (for its latency and size), if its version points at one."""
    if champion is None:
        return None
    try:
        version = MlflowClient(tracking_uri).get_model_version(champion["model_name"], champion["version"])
        uri = version.tags.get("retrain.gate_record")
        return mlflow.artifacts.load_dict(uri) if uri else None
    except Exception as exc:  # an unreadable record only disables the relative latency / size bounds
        logger.warning("evaluate: champion gate record %s unreadable (%s); relative bounds skipped", uri, exc)
        return None


def run_gates(
    ctx: StageContext,
    predictor: Predictor,
    model_dir: Path,
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    scores: np.ndarray,
    example: pd.DataFrame,
    context: dict[str, Any],
) -> tuple[list[GateResult], dict[str, Any]]:
    """The gate policy (retrain/evaluation/policy.py), latency through the served pyfunc, the fresh-process check."""
    from adapters.mlflow_pyfunc import load_serving_model
    from retrain.evaluation.policy import gate_policy
    from retrain.models.estimators import serve_output

    cfg = ctx.params.evaluate.gates
    latency: dict[str, float] = {}
    previous = (context["champion_record"] or {}).get("latency") or None

    def measure_latency() -> GateResult:
        """Time single rows through the registered pyfunc's own predict path, then bound them."""
        served = load_serving_model(model_dir)
        latency.update(single_row_latency_ms(lambda rows: served.predict(None, rows), X_test, cfg.latency.rows))
        latency["size_mb"] = directory_size_mb(model_dir)
        return latency_gate(latency, latency["size_mb"], cfg=cfg.latency, champion=previous)

    def check_serving() -> GateResult:
        """The packaged model must load and predict the example exactly in a fresh Python process."""
        return serving_gate(ctx.root, model_dir, example, serve_output(predictor, example), cfg=cfg.serving)

    gates, extra = gate_policy(
        ctx.params,
        ctx.dataset,
        predictor.predict_scores,
        X_test,
        y_test,
        scores,
        context,
        measure_latency,
        check_serving,
    )
    return gates, {**extra, "latency": latency}


def champion_scores_on(champion: dict[str, Any] | None, X: pd.DataFrame, dataset: DatasetConfig) -> np.ndarray | None:
    """The registered champion's scores on the same rows, through its pyfunc (exactly as it is served)."""
    if champion is None:
        return None
    return registry.load_champion_scores(champion, X, dataset.task, class_labels(dataset))


def run(ctx: StageContext) -> dict[str, Any]:
    """Apply every gate to the selected candidate on the test split and write the gate record and model card."""
    from retrain.evaluation.modelcard import curves, render_model_card
    from retrain.models.estimators import load_predictor

    dataset, cfg, metric = ctx.dataset, ctx.params.evaluate, ctx.params.evaluate.metric
    direction = get_metric(metric).direction
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        test = pd.read_parquet(ctx.path(SPLITS["test"]))
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]))
        y_test = encode_target(test[dataset.target], dataset)
        y_valid = encode_target(valid[dataset.target], dataset)
        X_test = test[dataset.features]
        example = valid[dataset.features].head(EXAMPLE_ROWS)

        summary = read_json(ctx.path(f"{CANDIDATES}/summary.json"))
        family = select_candidate(summary, metric)
        model_dir, built = build_model(ctx, family, y_valid, cfg.gates)
        predictor = load_predictor(model_dir)
        scores = predictor.predict_scores(X_test)
        candidate_score = score(metric, y_test, scores)

        baselines = [from_dict(b) for b in read_json(ctx.path(BASELINES))["baselines"]]
        baseline_scores = {b.strategy: score(metric, y_test, b.predict_scores(X_test)) for b in baselines}

        champion = registry.champion(ctx.tracking.tracking_uri, ctx.params.promote.model_name, ctx.params.promote.alias)
        champion_raw = champion_scores_on(champion, X_test, dataset)
        champion_score = score(metric, y_test, champion_raw) if champion_raw is not None else None
        context = {
            "candidate_score": candidate_score,
            "baseline_scores": baseline_scores,
            "champion_scores": champion_raw,
            "champion_record": champion_record(ctx.tracking.tracking_uri, champion),
            "confidence_threshold": built["confidence_threshold"],
        }
        gates, extra = run_gates(ctx, predictor, model_dir, X_test, y_test, scores, example, context)
        decision, failed = decide(gates)
        record = {
            "candidate": {"family": family, "model_dir": EVALUATED_MODEL, "model_hash": tree_md5(model_dir)},
            "model_name": ctx.params.promote.model_name,
            "task": dataset.task,
            "metric": metric,
            "direction": direction,
            "scores": {"candidate": candidate_score, "baselines": baseline_scores, "champion": champion_score},
            "champion": champion,
            "gates": [g.to_dict() for g in gates],
            "decision": decision,
            "failed_gates": failed,
            "calibration": built["calibration"],
            "confidence_threshold": built["confidence_threshold"],
            "curves": curves(y_test, scores, dataset.task, class_labels(dataset), cfg.gates.calibration.bins),
            "data_hash": ctx.tracking.tags.get("retrain.data_hash"),
            "git_commit": ctx.tracking.tags.get("retrain.git_commit"),
            "params_hash": ctx.tracking.tags.get("retrain.params_hash"),
            **extra,
        }
        write_json(ctx.path(GATE_RECORD), record)
        ctx.path(MODEL_CARD).write_text(render_model_card(record))
        mlflow.log_dict(record, "gate_record.json")
        mlflow.log_artifact(str(ctx.path(MODEL_CARD)))
        for gate in gates:
            logger.info("gate %s: %s (%s)", gate.name, gate.status.upper(), gate.reason)
        mlflow.log_metrics(gate_metrics(record, metric))
        metrics = {f"test_{metric}": candidate_score, **{f"test_{metric}_{k}": v for k, v in baseline_scores.items()}}
        if champion_score is not None:
            metrics[f"test_{metric}_champion"] = champion_score
        return finish(ctx, active, metrics, decision=decision, failed_gates=failed, family=family)


def gate_metrics(record: dict[str, Any], metric: str) -> dict[str, float]:
    """Per-gate values and per-slice metrics as MLflow metrics (finite ones only)."""
    out: dict[str, float] = {}
    for gate in record["gates"]:
        if gate["value"] is not None and math.isfinite(gate["value"]):
            out[metric_key("gate", gate["name"])] = float(gate["value"])
        out[metric_key("gate_passed", gate["name"])] = 1.0 if gate["status"] == "pass" else 0.0
    for column, entries in record["slices"]["columns"].items():
        for entry in entries:
            out[metric_key("test_n_slice", column, entry["value"])] = float(entry["n"])
            if entry["metric"] is not None:
                out[metric_key(f"test_{metric}_slice", column, entry["value"])] = entry["metric"]
    for key, value in record.get("latency", {}).items():
        out[metric_key("latency", key)] = float(value)
    return out


def require_columns(X: pd.DataFrame, columns: list[str], key: str) -> None:
    """Gate columns must exist in the test split (an inferred schema is checked only here)."""
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise DataError(f"evaluate: {key} columns {missing} are not in {SPLITS['test']}")


STAGE = Stage(
    "evaluate",
    run,
    deps=(SPLITS["valid"], SPLITS["test"], BASELINES, CANDIDATES),
    outs=(EVALUATE,),
    params=(
        "evaluate",
        "promote.model_name",
        "promote.alias",
        *DATASET_KEYS,
        "dataset.slices",
        "dataset.protected",
        "seed",
    ),
    key_inputs=champion_input,
)
