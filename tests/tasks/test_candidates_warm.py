"""Given a champion in a real SQLite registry, the candidates stage finds the params its family was tuned to and
warm-starts from them only when the champion was trained on other data; the source is the stage's cache input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from adapters.jsonfile import write_json
from engine.context import StageContext, Tracking
from engine.stage import find_stage
from flows.dag import DAG
from retrain.catalog import CANDIDATES
from tasks.candidates import WARM_FROM, champion_params, warm_input, warm_source
from tests.faults.tiny_registry import MODEL, register_tiny

CHAMPION_DATA = "0" * 32
"""The data hash tiny_registry's versions carry (their params hash is "test")."""


def test_warm_start_source_follows_the_champion_and_its_data(tmp_path: Path) -> None:
    reg = register_tiny(tmp_path, "warm", {"1": 5}, rows=300, seed=0)
    client = MlflowClient(reg.uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    model_hash = client.get_model_version(MODEL, "1").tags["retrain.model_hash"]
    tuned = {"learning_rate": 0.05, "num_leaves": 21, "objective": "binary", "monotone_constraints": [0, 1]}
    mlflow.set_tracking_uri(reg.uri)
    try:
        tags = {"retrain.data_hash": CHAMPION_DATA, "retrain.params_hash": "test", "retrain.family": "lightgbm"}
        with mlflow.start_run(experiment_id=reg.ctx.tracking.experiment_id, run_name="candidates/lightgbm", tags=tags):
            mlflow.log_params({k: str(v) for k, v in tuned.items()})  # as log_family logs best_params
    finally:
        mlflow.set_tracking_uri(None)
    tracking = Tracking(reg.uri, reg.ctx.tracking.experiment_id, None, {"retrain.data_hash": "new-rows"})
    ctx = StageContext(find_stage(DAG, "candidates"), reg.ctx.params, tmp_path, tracking)
    assert ctx.params.candidates.warm_start_from_champion, "params.yaml turns the champion warm start on"

    assert warm_source(ctx) == model_hash, "a champion trained on other data is the warm-start source"
    assert warm_input(ctx) == {WARM_FROM: model_hash}, "and it enters the candidates cache key"
    found = champion_params(ctx, model_hash, ["lightgbm", "hgb"])
    assert found == {"lightgbm": tuned}, f"the family's tuned params, parsed back from MLflow's strings: {found}"

    same = replace(ctx, tracking=replace(tracking, tags={"retrain.data_hash": CHAMPION_DATA}))
    assert warm_source(same) is None, "trained on this very data, with no recorded source: no warm start"
    write_json(same.path(f"{CANDIDATES}/summary.json"), {WARM_FROM: "abc", "families": {}})
    assert warm_input(same) == {WARM_FROM: "abc"}, "the source the current outputs recorded is kept (cache hit)"

    off = ctx.params.model_copy(
        update={"candidates": ctx.params.candidates.model_copy(update={"warm_start_from_champion": False})}
    )
    assert warm_input(replace(ctx, params=off)) == {}, "off: nothing outside the workspace in the cache key"
