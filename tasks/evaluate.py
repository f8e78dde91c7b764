"""evaluate: score the best candidate on test against the baselines and the champion; write the gate record."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import pandas as pd
from prefect import task

from retrain.baselines import from_dict
from retrain.gates import beats_baselines, decide, metric_is_finite, no_regression
from retrain.metrics import encode_labels, score
from retrain.models import load_predictor
from retrain.stages import BASELINES, CANDIDATES, GATE_RECORD, SPLITS
from tasks import registry
from tasks.runtime import StageContext, clear_outputs, finish, read_json, stage_run, tree_md5, write_json

logger = logging.getLogger(__name__)


def select_candidate(summary: dict[str, Any]) -> str:
    """The family with the best validation score (test is kept for the gates only)."""
    return max(summary["families"], key=lambda f: summary["families"][f]["valid_score"])


def run(ctx: StageContext) -> dict[str, Any]:
    """Apply every gate to the selected candidate on the test split and write one gate record."""
    dataset, cfg, metric = ctx.dataset, ctx.params.evaluate, ctx.params.evaluate.metric
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        test = pd.read_parquet(ctx.path(SPLITS["test"]))
        y_test = encode_labels(test[dataset.target], dataset.positive_label)
        X_test = test[dataset.features]

        summary = read_json(ctx.path(f"{CANDIDATES}/summary.json"))
        family = select_candidate(summary)
        model_dir = ctx.path(f"{CANDIDATES}/{family}")
        candidate_score = score(metric, y_test, load_predictor(model_dir).predict_scores(X_test))

        baselines = [from_dict(b) for b in read_json(ctx.path(BASELINES))["baselines"]]
        baseline_scores = {b.strategy: score(metric, y_test, b.predict_scores(len(y_test))) for b in baselines}

        champion = registry.champion(ctx.tracking.tracking_uri, ctx.params.promote.model_name, ctx.params.promote.alias)
        champion_score = None
        if champion is not None:
            champion_score = score(metric, y_test, registry.load_champion_scores(champion, X_test))

        gates = [
            metric_is_finite(metric, candidate_score),
            beats_baselines(metric, candidate_score, baseline_scores, cfg.baseline_margin),
            no_regression(metric, candidate_score, champion_score, cfg.champion_tolerance),
        ]
        decision, failed = decide(gates)
        record = {
            "candidate": {"family": family, "model_dir": f"{CANDIDATES}/{family}", "model_hash": tree_md5(model_dir)},
            "metric": metric,
            "scores": {"candidate": candidate_score, "baselines": baseline_scores, "champion": champion_score},
            "champion": champion,
            "gates": [g.to_dict() for g in gates],
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
        return finish(ctx, active, metrics, decision=decision, failed_gates=failed, family=family)


evaluate_task = task(run, name="evaluate")
