"""evaluate: score the best candidate on test against the baselines and the champion; write the gate record."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from prefect import task

from retrain.baselines import from_dict
from retrain.errors import DataError
from retrain.gates import beats_baselines, decide, metric_is_finite, no_regression
from retrain.metrics import class_labels, encode_target, get_metric, is_better, score
from retrain.models import load_predictor
from retrain.stages import BASELINES, CANDIDATES, GATE_RECORD, SPLITS
from tasks import registry
from tasks.runtime import StageContext, clear_outputs, finish, read_json, stage_run, tree_md5, write_json

logger = logging.getLogger(__name__)

MIN_SLICE_ROWS = 30
"""A slice value is scored only with at least this many test rows (smaller ones are listed with their n)."""


def select_candidate(summary: dict[str, Any], metric: str | None = None) -> str:
    """The family with the best validation score in the metric's direction (test is kept for the gates only)."""
    metric = metric or summary.get("metric", "roc_auc")
    families = list(summary["families"])
    best = families[0]
    for family in families[1:]:
        if is_better(metric, summary["families"][family]["valid_score"], summary["families"][best]["valid_score"]):
            best = family
    return best


def slice_scores(
    test: pd.DataFrame, columns: tuple[str, ...], metric: str, y: np.ndarray, scores: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """The metric per value of each slice column on test, with n; values under MIN_SLICE_ROWS rows are not scored."""
    out: dict[str, list[dict[str, Any]]] = {}
    for column in columns:
        if column not in test.columns:
            raise DataError(f"evaluate: slice column {column!r} (dataset.slices) is not in {SPLITS['test']}")
        keys = test[column].astype("str").where(test[column].notna(), "(missing)").to_numpy()
        entries = []
        values, counts = np.unique(keys, return_counts=True)
        for value, n in sorted(zip(values, counts, strict=True), key=lambda vc: (-vc[1], vc[0])):
            entry: dict[str, Any] = {"value": str(value), "n": int(n), "metric": None}
            if n >= MIN_SLICE_ROWS:
                mask = keys == value
                result = score(metric, y[mask], scores[mask])
                entry["metric"] = result if math.isfinite(result) else None
            else:
                entry["skipped"] = f"fewer than {MIN_SLICE_ROWS} test rows"
            entries.append(entry)
        out[column] = entries
    return out


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, `_ - . / :` and spaces only)."""
    return re.sub(r"[^\w./: -]", "_", "_".join(parts))


def run(ctx: StageContext) -> dict[str, Any]:
    """Apply every gate to the selected candidate on the test split and write one gate record."""
    dataset, cfg, metric = ctx.dataset, ctx.params.evaluate, ctx.params.evaluate.metric
    direction = get_metric(metric).direction
    labels = class_labels(dataset)
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        test = pd.read_parquet(ctx.path(SPLITS["test"]))
        y_test = encode_target(test[dataset.target], dataset)
        X_test = test[dataset.features]

        summary = read_json(ctx.path(f"{CANDIDATES}/summary.json"))
        family = select_candidate(summary, metric)
        model_dir = ctx.path(f"{CANDIDATES}/{family}")
        candidate_scores = load_predictor(model_dir).predict_scores(X_test)
        candidate_score = score(metric, y_test, candidate_scores)

        baselines = [from_dict(b) for b in read_json(ctx.path(BASELINES))["baselines"]]
        baseline_scores = {b.strategy: score(metric, y_test, b.predict_scores(X_test)) for b in baselines}

        champion = registry.champion(ctx.tracking.tracking_uri, ctx.params.promote.model_name, ctx.params.promote.alias)
        champion_score = None
        if champion is not None:
            champion_raw = registry.load_champion_scores(champion, X_test, dataset.task, labels)
            champion_score = score(metric, y_test, champion_raw)

        gates = [
            metric_is_finite(metric, candidate_score),
            beats_baselines(metric, candidate_score, baseline_scores, cfg.gates.baseline.margin),
            no_regression(metric, candidate_score, champion_score, cfg.gates.champion.tolerance),
        ]
        decision, failed = decide(gates)
        slices = slice_scores(test, dataset.slices, metric, y_test, candidate_scores)
        record = {
            "candidate": {"family": family, "model_dir": f"{CANDIDATES}/{family}", "model_hash": tree_md5(model_dir)},
            "task": dataset.task,
            "metric": metric,
            "direction": direction,
            "scores": {"candidate": candidate_score, "baselines": baseline_scores, "champion": champion_score},
            "champion": champion,
            "gates": [g.to_dict() for g in gates],
            "slices": {"min_rows": MIN_SLICE_ROWS, "columns": slices},
            "decision": decision,
            "failed_gates": failed,
            "data_hash": ctx.tracking.tags.get("retrain.data_hash"),
            "git_commit": ctx.tracking.tags.get("retrain.git_commit"),
            "params_hash": ctx.tracking.tags.get("retrain.params_hash"),
        }
        write_json(ctx.path(GATE_RECORD), record)
        mlflow.log_dict(record, "gate_record.json")
        for gate in gates:
            logger.info("gate %s: %s (%s)", gate.name, "PASS" if gate.passed else "FAIL", gate.reason)
        metrics = {f"test_{metric}": candidate_score, **{f"test_{metric}_{k}": v for k, v in baseline_scores.items()}}
        if champion_score is not None:
            metrics[f"test_{metric}_champion"] = champion_score
        slice_metrics = {}
        for column, entries in slices.items():
            for entry in entries:
                slice_metrics[metric_key("test_n_slice", column, entry["value"])] = float(entry["n"])
                if entry["metric"] is not None:
                    slice_metrics[metric_key(f"test_{metric}_slice", column, entry["value"])] = entry["metric"]
        mlflow.log_metrics(slice_metrics)
        return finish(ctx, active, metrics, decision=decision, failed_gates=failed, family=family)


evaluate_task = task(run, name="evaluate")
