"""Checks on the MLflow parent run of a pipeline run, shared by the end-to-end tests that already make one
(the flow in test_training.py, `dvc repro` in test_dvc_repro.py): no extra pipeline run for them."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from adapters.dvc_store import file_md5
from adapters.mlflow_parent import EXPERIMENT_KIND_TAG, TRAINING_KIND
from engine.runner import INVOCATION_TAG

SNAPSHOT = "data/raw/snapshot.parquet"


def client_for(root: Path) -> MlflowClient:
    """The project's SQLite tracking store."""
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def assert_parent_carries_the_run(root: Path, run: Run, metric: str, promotion: str) -> None:
    """The parent has the key params, headline metrics, decision tags, the model version and the dataset input."""
    client = client_for(root)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert {"task", "metric", "target", "families", "n_trials", "cv_folds", "seed", "sample_rows", "source"} <= set(
        params
    ), f"key params missing on the parent: {sorted(params)}"
    assert params["metric"] == metric and params["task"] == "binary", params
    for key in (f"test_{metric}", f"valid_{metric}", f"test_{metric}_best_baseline", "gates_failed", "wall_seconds"):
        assert key in metrics, f"headline metric {key} missing on the parent: {sorted(metrics)}"
    assert 0.5 < metrics[f"test_{metric}"] <= 1.0, metrics
    assert metrics["wall_seconds"] > 0, metrics
    assert tags.get("retrain.decision") == "promote", tags.get("retrain.decision")
    assert tags.get("retrain.promotion") == promotion, tags.get("retrain.promotion")
    if promotion == "promoted":
        champion = client.get_model_version_by_alias("adult-income", "champion")
        assert tags.get("retrain.model_version") == str(champion.version), "the parent names the model version"
    data_hash = file_md5(root / SNAPSHOT)
    assert tags.get("retrain.data_hash") == data_hash, "the parent carries the DVC hash"
    [dataset_input] = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.digest == data_hash, f"dataset digest {dataset.digest} is not the DVC md5 {data_hash}"
    assert dataset.name == "adult", dataset.name
    source = json.loads(dataset.source)["uri"]
    assert source.endswith(f"files/md5/{data_hash[:2]}/{data_hash[2:]}") and Path(source).is_file(), (
        f"dataset source {source} is not the snapshot's object on the DVC remote"
    )
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}, dataset_input.tags
    profile = json.loads(dataset.profile)
    assert profile["num_rows"] > 0 and json.loads(dataset.schema)["mlflow_colspec"], "schema and rows from the footer"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == TRAINING_KIND, "the UI must open the experiment on runs"


def assert_dvc_repro_shares_one_parent(root: Path, stages: tuple[str, ...]) -> Run:
    """Every stage run of the one `dvc repro` sits under one FINISHED `pipeline-dvc` parent; returns that parent."""
    client = client_for(root)
    experiment = client.get_experiment_by_name("retrain-adult")
    dvc_runs = f"tags.`{INVOCATION_TAG}` != '' and attributes.run_name = 'pipeline-dvc'"  # `dvc exp run`s: -exp-
    parents = client.search_runs([experiment.experiment_id], filter_string=dvc_runs)
    assert len(parents) == 1, f"one parent per dvc invocation, found {[p.info.run_id for p in parents]}"
    [parent] = parents
    assert parent.info.status == "FINISHED", parent.info.status
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = sorted(c.data.tags.get("retrain.stage", "") for c in children)
    assert names == sorted(stages), f"the stage runs under the dvc parent: {names}"
    assert int(parent.data.tags["retrain.pid"]) != int(children[0].data.tags["retrain.pid"]), (
        "the parent is owned by the dvc process (recovery closes it if dvc dies), not by a stage process"
    )
    return parent
