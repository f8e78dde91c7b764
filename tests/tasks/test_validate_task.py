"""The validate stage with real GX, MLflow (SQLite in tmp), DVC (repo + remote in tmp) and registry.

A passing gate writes models/validate/report.json and logs Data Docs + report to MLflow; a failing gate
logs the same (so the user can see why) and writes nothing; drift is measured against the champion's
training snapshot, fetched from DVC by the md5 the champion is tagged with, and warns or blocks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from adapters import dvc_store as dvcstore
from adapters.jsonfile import write_json
from engine.context import StageContext
from engine.pipeline import PipelineRun
from flows.dag import DAG
from retrain.catalog import SCHEMA, SNAPSHOT, VALIDATION
from retrain.config import Params, load_params
from retrain.data.ingest import SOURCE_COLUMN
from retrain.data.schema import to_json
from retrain.errors import DataError, DataValidationError
from tasks.validate import REFERENCE_KEY, STAGE, drift_reference_input
from tasks.validate import run as validate
from tests.conftest import make_project, small_params

MODEL = "adult-income"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("validate") / "proj", small_params())


def adult_snapshot(root: Path, rows: int = 2500) -> pd.DataFrame:
    """Real Adult rows from both sources, typed like ingest's snapshot."""
    params = load_params(root / "params.yaml")
    text = {c: "str" for c in params.dataset.categorical} | {"income": "str"}
    parts = []
    for source, name in (("main", "adult_train.csv.gz"), ("test", "adult_test.csv.gz")):
        options = {"na_values": ["?"], "keep_default_na": False, "skipinitialspace": True, "dtype": text}
        frame = pd.read_csv(root / "data/source" / name, nrows=rows, **options)
        frame["income"] = frame["income"].str.removesuffix(".")
        frame[SOURCE_COLUMN] = source
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def put_snapshot(root: Path, snapshot: pd.DataFrame) -> str:
    """Write the snapshot and schema files the validate stage reads; returns the snapshot's md5."""
    params = load_params(root / "params.yaml")
    path = root / SNAPSHOT
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.to_parquet(path, index=False)
    write_json(root / SCHEMA, to_json(params.dataset, params.dataset))
    return dvcstore.file_md5(path)


def context(root: Path, overrides: list[str] | None = None) -> tuple[StageContext, Params]:
    """The validate stage's context inside a fresh pipeline run, with its drift reference as the flow passes it."""
    params = load_params(root / "params.yaml", overrides)
    run = PipelineRun.start(root, params, DAG, "test", commit_lineage=False, flow_run_id=None)
    return run.context(STAGE), params


def artifacts(ctx: StageContext, run_id: str, path: str) -> list[str]:
    client = MlflowClient(ctx.tracking.tracking_uri)
    return [a.path for a in client.list_artifacts(run_id, path)]


def validate_runs(ctx: StageContext) -> list:
    client = MlflowClient(ctx.tracking.tracking_uri)
    return client.search_runs(
        [ctx.tracking.experiment_id],
        f"tags.mlflow.parentRunId = '{ctx.tracking.parent_run_id}' and tags.`retrain.stage` = 'validate'",
    )


def make_champion(root: Path, ctx: StageContext, data_hash: str) -> None:
    """A registered version tagged with a training-snapshot md5 and aliased champion (what promote leaves)."""
    client = MlflowClient(ctx.tracking.tracking_uri)
    if not client.search_registered_models(f"name = '{MODEL}'"):
        client.create_registered_model(MODEL)
    with mlflow.start_run(experiment_id=ctx.tracking.experiment_id, run_name="champion") as run:
        mlflow.log_dict({"trained_on": data_hash}, "model/meta.json")
    version = client.create_model_version(
        MODEL, f"{run.info.artifact_uri}/model", run.info.run_id, tags={"retrain.data_hash": data_hash}
    )
    client.set_registered_model_alias(MODEL, "champion", version.version)


def test_passing_gate_writes_the_report_and_logs_data_docs(project: Path) -> None:
    put_snapshot(project, adult_snapshot(project))
    ctx, _ = context(project)
    assert ctx.external == {REFERENCE_KEY: "none"}, "no champion yet: no drift reference"
    result = validate(ctx)
    report = json.loads((project / VALIDATION).read_text())
    assert report["success"] and report["failed"] == 0
    assert report["drift"]["status"] == "skipped" and "no reference" in report["drift"]["reason"]
    run_id = result["mlflow_run_id"]
    logged = artifacts(ctx, run_id, "validation")
    assert {"validation/report.json", "validation/data_docs"} <= set(logged), logged
    docs = artifacts(ctx, run_id, "validation/data_docs")
    assert {"validation/data_docs/index.html", "validation/data_docs/retrain_checks.html"} <= set(docs), docs
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/validation/report.json") == report
    first = (project / VALIDATION).read_bytes()
    validate(context(project)[0])
    assert (project / VALIDATION).read_bytes() == first, "same inputs, same report bytes (no times or run ids)"


def test_failing_gate_logs_why_and_leaves_no_report(project: Path) -> None:
    snapshot = adult_snapshot(project)
    snapshot.loc[::50, "sex"] = "Robot"
    put_snapshot(project, snapshot)
    (project / VALIDATION).parent.mkdir(parents=True, exist_ok=True)
    (project / VALIDATION).write_text("{}")
    ctx, params = context(project)
    with pytest.raises(DataValidationError) as caught:
        validate(ctx)
    message = str(caught.value)
    assert message.startswith(f"validate: {params.ingest.source} + {params.ingest.test_source}"), message
    assert "column 'sex': ExpectColumnValuesToBeInSet failed" in message and "'Robot' x100" in message, message
    assert [f["column"] for f in caught.value.failures] == ["sex"], caught.value.failures
    assert not (project / VALIDATION).exists(), "a failed gate must not leave a report that looks valid"
    (run,) = validate_runs(ctx)
    assert run.info.status == "FAILED"
    assert "validation/data_docs/index.html" in artifacts(ctx, run.info.run_id, "validation/data_docs")
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/validation/report.json")
    assert logged["success"] is False and logged["failed"] == 1


def test_drift_reference_is_the_champions_snapshot_and_part_of_the_key(project: Path) -> None:
    reference = adult_snapshot(project)
    md5 = put_snapshot(project, reference)
    ctx, params = context(project)
    make_champion(project, ctx, md5)
    assert drift_reference_input(ctx) == {REFERENCE_KEY: "none"}, "champion trained on this very snapshot"
    off = load_params(project / "params.yaml", ["validate.drift.action=off"])
    assert drift_reference_input(replace(ctx, params=off)) == {REFERENCE_KEY: "off"}
    put_snapshot(project, reference.iloc[::-1])
    assert drift_reference_input(ctx) == {REFERENCE_KEY: md5}
    keyed = [StageContext(STAGE, params, project, ctx.tracking, {REFERENCE_KEY: r}) for r in ("none", md5)]
    assert keyed[0].cache_key() != keyed[1].cache_key(), "another champion snapshot re-runs validate"


def test_drift_warns_or_blocks_against_a_reference_pulled_from_the_remote(project: Path, caplog) -> None:
    reference = adult_snapshot(project)
    md5 = put_snapshot(project, reference)
    dvcstore.add_to_cache(project, project / SNAPSHOT, md5)
    dvcstore.push(project, md5, None)
    cache = dvcstore.open_repo(project).cache.local
    Path(cache.oid_to_path(md5)).unlink()  # only the remote has it now: fetch must pull it
    ctx, _ = context(project)
    make_champion(project, ctx, md5)
    older = reference[reference["age"] > 40]
    put_snapshot(project, older)

    ctx, _ = context(project)
    assert ctx.external == {REFERENCE_KEY: md5}
    with caplog.at_level(logging.WARNING, logger="tasks.validate"):
        validate(ctx)
    report = json.loads((project / VALIDATION).read_text())
    drift = report["drift"]
    assert report["success"] and drift["status"] == "computed" and drift["action"] == "warn"
    assert drift["reference_data_hash"] == md5 and drift["reference_rows"] == 2500
    assert drift["drifted"][0] == "age" and report["warned"] == len(drift["drifted"]), drift["drifted"]
    assert "warning (not blocking)" in caplog.text and "column 'age': drift_psi failed" in caplog.text, caplog.text

    ctx, _ = context(project, ["validate.drift.action=block"])
    with pytest.raises(DataValidationError) as caught:
        validate(ctx)
    lines = str(caught.value).splitlines()
    age = next(line for line in lines if "column 'age'" in line)
    assert "drift_psi failed (rule: PSI vs the champion's training snapshot <= 0.25" in age, age
    assert f"DVC md5 {md5}" in age and "action block" in age, age
    assert not (project / VALIDATION).exists()


def test_an_unavailable_reference_warns_or_blocks(project: Path, caplog) -> None:
    put_snapshot(project, adult_snapshot(project))
    ctx, _ = context(project)
    lost = "0" * 32
    make_champion(project, ctx, lost)  # its snapshot is in neither the DVC cache nor the remote
    ctx, _ = context(project)
    with caplog.at_level(logging.WARNING, logger="tasks.validate"):
        validate(ctx)
    drift = json.loads((project / VALIDATION).read_text())["drift"]
    assert drift["status"] == "unavailable" and lost in drift["reason"], drift
    assert "drift not measured" in caplog.text
    ctx, _ = context(project, ["validate.drift.action=block"])
    with pytest.raises(DataError, match=r"drift reference .* unavailable"):
        validate(ctx)
