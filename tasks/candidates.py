"""candidates: tune each model family by cross-validated search, refit the best, save it safely."""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
import pandas as pd
from prefect import task

from retrain.metrics import encode_labels, score
from retrain.models import build_model, save_model
from retrain.stages import CANDIDATES, SPLITS
from retrain.tuning import tune
from tasks.runtime import StageContext, clear_outputs, finish, stage_run, write_json

logger = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    """One child run per family: search, refit on train, score on valid, write the model files."""
    dataset, cfg, metric = ctx.dataset, ctx.params.candidates, ctx.params.evaluate.metric
    clear_outputs(ctx)
    with stage_run(ctx) as active:
        train = pd.read_parquet(ctx.path(SPLITS["train"]))
        valid = pd.read_parquet(ctx.path(SPLITS["valid"]))
        X_train, y_train = train[dataset.features], encode_labels(train[dataset.target], dataset.positive_label)
        X_valid, y_valid = valid[dataset.features], encode_labels(valid[dataset.target], dataset.positive_label)
        summary: dict[str, Any] = {}
        for family in cfg.families:
            family_tags = {**ctx.tracking.tags, "retrain.stage": ctx.stage, "retrain.family": family}
            with mlflow.start_run(run_name=f"candidates/{family}", nested=True, tags=family_tags):
                result = tune(
                    family,
                    getattr(cfg, family),
                    X_train,
                    y_train,
                    numeric=dataset.numeric,
                    categorical=dataset.categorical,
                    metric=metric,
                    n_trials=cfg.n_trials,
                    n_folds=cfg.cv_folds,
                    seed=ctx.params.seed,
                )
                started = time.perf_counter()
                model = build_model(family, result.best_params, dataset.numeric, dataset.categorical)
                model.fit(X_train, y_train)
                fit_seconds = time.perf_counter() - started
                valid_score = score(metric, y_valid, model.predict_proba(X_valid)[:, 1])
                save_model(model, family, dataset.features, ctx.path(f"{CANDIDATES}/{family}"))
                mlflow.log_params({k: str(v) for k, v in result.best_params.items()})
                mlflow.log_metrics(
                    {
                        f"cv_{metric}": result.cv_score,
                        f"valid_{metric}": valid_score,
                        "tuning_seconds": result.seconds,
                        "fit_seconds": fit_seconds,
                    }
                )
                mlflow.log_dict({"trials": result.trials}, "trials.json")
                summary[family] = {
                    "cv_score": result.cv_score,
                    "valid_score": valid_score,
                    "best_params": result.best_params,
                    "n_trials": len(result.trials),
                    "tuning_seconds": round(result.seconds, 3),
                }
                logger.info("candidates: %s CV %.4f, valid %.4f", family, result.cv_score, valid_score)
        write_json(ctx.path(f"{CANDIDATES}/summary.json"), {"metric": metric, "families": _stable(summary)})
        return finish(ctx, active, {f"valid_{metric}_{f}": s["valid_score"] for f, s in summary.items()})


def _stable(summary: dict[str, Any]) -> dict[str, Any]:
    """Drop wall-clock timings from the file so identical models give an identical summary."""
    return {family: {k: v for k, v in entry.items() if k != "tuning_seconds"} for family, entry in summary.items()}


candidates_task = task(run, name="candidates")
