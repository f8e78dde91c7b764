"""The validate stage with real GX, MLflow (SQLite in tmp), DVC (repo + remote in tmp) and registry.

A passing gate writes models/validate/report.json and logs Data Docs + report to MLflow; a failing gate
logs the same (so the user can see why) and writes nothing; drift and the champion domains are measured
against the champion's training snapshot, fetched from DVC by the md5 the champion is tagged with, and
warn or block.
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
from tasks.validate import REFERENCE_KEY, STAGE, reference_input
from tasks.validate import run as validate
from tests.conftest import make_project, small_params
from tests.unit.test_validate import assert_self_contained, visible_text

MODEL = "adult-income"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("validate") / "proj", small_params())


def adult_snapshot(root: Path, rows: int = 2500, main_from: int = 0) -> pd.DataFrame:
    """Real Adult rows from both sources, typed like ingest's snapshot; `main_from`: a later batch of main rows."""
    params = load_params(root / "params.yaml")
    text = {c: "str" for c in params.dataset.categorical} | {"income": "str"}
    parts = []
    for source, name in (("main", "adult_train.csv.gz"), ("test", "adult_test.csv.gz")):
        options = {"na_values": ["?"], "keep_default_na": False, "skipinitialspace": True, "dtype": text}
        skip = range(1, 1 + main_from) if source == "main" else None
        frame = pd.read_csv(root / "data/source" / name, nrows=rows, skiprows=skip, **options)
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
    mlflow.set_tracking_uri(ctx.tracking.tracking_uri)  # also when no stage ran before in this process
    if not client.search_registered_models(f"name = '{MODEL}'"):
        client.create_registered_model(MODEL)
    with mlflow.start_run(experiment_id=ctx.tracking.experiment_id, run_name="champion") as run:
        mlflow.log_dict({"trained_on": data_hash}, "model/meta.json")
    version = client.create_model_version(
        MODEL, f"{run.info.artifact_uri}/model", run.info.run_id, tags={"retrain.data_hash": data_hash}
    )
    client.set_registered_model_alias(MODEL, "champion", version.version)


def logged_docs(run_id: str, tmp_path: Path) -> Path:
    """The Data Docs site as MLflow serves it: downloaded from the run's artifacts."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="validation/data_docs", dst_path=tmp_path)
    return Path(path)


def test_passing_gate_writes_the_report_and_logs_data_docs(project: Path, tmp_path: Path) -> None:
    put_snapshot(project, adult_snapshot(project))
    ctx, _ = context(project)
    assert ctx.external == {REFERENCE_KEY: "none"}, "no champion yet: no reference"
    result = validate(ctx)
    report = json.loads((project / VALIDATION).read_text())
    assert report["success"] and report["failed"] == 0
    assert report["drift"]["status"] == "skipped" and "no reference" in report["drift"]["reason"]
    assert report["domains"]["status"] == "skipped", "no champion: only the declared schema is checked"
    assert not [c for c in report["checks"] if c.get("reference")], "no champion-domain expectation without one"
    run_id = result["mlflow_run_id"]
    logged = artifacts(ctx, run_id, "validation")
    assert {"validation/report.json", "validation/data_docs"} <= set(logged), logged
    docs = artifacts(ctx, run_id, "validation/data_docs")
    assert {"validation/data_docs/index.html", "validation/data_docs/retrain_checks.html"} <= set(docs), docs
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/validation/report.json") == report
    gx_evaluated = sum(c["engine"] == "gx" for c in report["checks"])
    sizes = assert_self_contained(logged_docs(run_id, tmp_path), gx_evaluated, "Succeeded")
    logging.getLogger(__name__).info("logged Data Docs: %d bytes in %s", sum(sizes.values()), sizes)
    first = (project / VALIDATION).read_bytes()
    validate(context(project)[0])
    assert (project / VALIDATION).read_bytes() == first, "same inputs, same report bytes (no times or run ids)"


def test_failing_gate_logs_why_and_leaves_no_report(project: Path, tmp_path: Path) -> None:
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
    site = logged_docs(run.info.run_id, tmp_path)
    assert_self_contained(site, sum(c["engine"] == "gx" for c in logged["checks"]), "Failed")
    result = visible_text((site / "validation_result.html").read_text(encoding="utf-8"))
    assert "Unsuccessful Expectations 1" in result and "Robot" in result, "the failed check and its values show"


def test_reference_is_the_champions_snapshot_and_part_of_the_key(project: Path) -> None:
    reference = adult_snapshot(project)
    md5 = put_snapshot(project, reference)
    ctx, params = context(project)
    make_champion(project, ctx, md5)
    assert reference_input(ctx) == {REFERENCE_KEY: "none"}, "champion trained on this very snapshot"
    drift_off = load_params(project / "params.yaml", ["validate.drift.action=off"])
    both_off = load_params(project / "params.yaml", ["validate.drift.action=off", "validate.domains.action=off"])
    assert reference_input(replace(ctx, params=both_off)) == {REFERENCE_KEY: "off"}
    put_snapshot(project, reference.iloc[::-1])
    assert reference_input(ctx) == {REFERENCE_KEY: md5}
    assert reference_input(replace(ctx, params=drift_off)) == {REFERENCE_KEY: md5}, "champion domains need it"
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
    ctx, _ = context(project, ["validate.domains.action=warn"])
    with caplog.at_level(logging.WARNING, logger="tasks.validate"):
        validate(ctx)
    report = json.loads((project / VALIDATION).read_text())
    drift, domains = report["drift"], report["domains"]
    assert drift["status"] == "unavailable" and lost in drift["reason"], drift
    assert domains["status"] == "unavailable" and lost in domains["reason"], domains
    assert "drift and champion domains not checked" in caplog.text
    ctx, _ = context(project, ["validate.drift.action=block", "validate.domains.action=warn"])
    with pytest.raises(
        DataError, match=r"\(the champion's training snapshot, DVC md5 0+\) unavailable, and validate\.drift"
    ):
        validate(ctx)
    ctx, _ = context(project)  # the defaults: drift warn, champion domains block (fail closed)
    with pytest.raises(DataError, match=r"unavailable, and validate\.domains\.action=block needs it"):
        validate(ctx)


# --- champion domains: the columns params.yaml leaves open, checked against the champion's training data ---


def champion_on(root: Path, snapshot: pd.DataFrame) -> str:
    """Make `snapshot` the champion's training snapshot (in the local DVC cache, as version leaves it)."""
    md5 = put_snapshot(root, snapshot)
    dvcstore.add_to_cache(root, root / SNAPSHOT, md5)
    make_champion(root, context(root)[0], md5)
    return md5


def champion_version(ctx: StageContext) -> str:
    return str(MlflowClient(ctx.tracking.tracking_uri).get_model_version_by_alias(MODEL, "champion").version)


def with_value(snapshot: pd.DataFrame, column: str, value: object, share: float, source: str = "main") -> pd.DataFrame:
    """A copy in which `share` of the rows of `source` (the first of each hundred) hold `value` in `column`."""
    out = snapshot.copy()
    rows = out.index[out[SOURCE_COLUMN] == source]
    out.loc[rows[[i % 100 < round(share * 100) for i in range(len(rows))]], column] = value
    return out


def non_null_share(snapshot: pd.DataFrame, column: str, value: object, source: str = "main") -> float:
    values = snapshot.loc[snapshot[SOURCE_COLUMN] == source, column].dropna()
    return float((values == value).mean())


def test_an_unseen_category_in_an_undeclared_column_blocks_naming_column_value_share(project: Path) -> None:
    md5 = champion_on(project, adult_snapshot(project))
    batch = with_value(adult_snapshot(project, main_from=2500), "occupation", "Astronaut", 0.30)
    put_snapshot(project, batch)
    share = non_null_share(batch, "occupation", "Astronaut")
    assert 0.30 <= share < 0.32, "30% of the rows, a little more of the non-null values"
    ctx, params = context(project, ["validate.drift.action=off"])  # the reference is fetched for domains alone
    assert ctx.external == {REFERENCE_KEY: md5}
    before = champion_version(ctx)
    with pytest.raises(DataValidationError) as caught:
        validate(ctx)
    (line,) = [line for line in str(caught.value).splitlines() if "'occupation'" in line]
    assert line.startswith(f"  {params.ingest.source}: column 'occupation': ExpectColumnValuesToBeInSet failed"), line
    assert "champion domain" in line and "validate.domains.max_unseen_fraction (action block" in line, line
    assert f"{100 * share:.2f}% of the non-null values of the main rows (750 of " in line, line
    assert "e.g. ['Astronaut' x750]" in line and f"DVC md5 {md5}" in line, line
    assert [f["column"] for f in caught.value.failures] == ["occupation"], "no other column differs enough"
    assert champion_version(ctx) == before, "a failed gate leaves the champion alias alone"
    assert not (project / VALIDATION).exists()
    (run,) = [r for r in validate_runs(ctx) if r.info.status == "FAILED"]
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/validation/report.json")
    domains = logged["domains"]
    assert domains["status"] == "computed" and domains["reference_data_hash"] == md5, domains
    assert domains["reference_rows"] == 2500 and "Astronaut" not in domains["columns"]["occupation"]["values"]
    assert "race" not in domains["columns"], "a declared domain keeps precedence: no champion domain for race"
    assert "age" not in domains["columns"], "age declares min and max"
    assert domains["columns"]["fnlwgt"]["min"] is None, "fnlwgt declares min: only its max is the champion's"


def test_a_share_within_the_bound_passes_and_the_test_rows_are_checked_on_their_own(project: Path) -> None:
    champion_on(project, adult_snapshot(project))
    below = with_value(adult_snapshot(project, main_from=2500), "occupation", "Astronaut", 0.01)
    put_snapshot(project, below)
    validate(context(project)[0])
    report = json.loads((project / VALIDATION).read_text())
    (main,) = [
        c for c in report["checks"] if c.get("reference") and c["column"] == "occupation" and c["sources"] == ["main"]
    ]
    assert main["success"] and 0.9 < main["unexpected_percent"] < 1.2, main
    assert report["domains"]["status"] == "computed" and report["failed"] == 0

    in_test = with_value(adult_snapshot(project, main_from=2500), "workclass", "Moonlighting", 0.10, "test")
    put_snapshot(project, in_test)
    ctx, params = context(project)
    with pytest.raises(DataValidationError) as caught:
        validate(ctx)
    (line,) = [line for line in str(caught.value).splitlines() if "'workclass'" in line]
    assert line.startswith(f"  {params.ingest.test_source}: column 'workclass'"), "the test source is named"
    share = non_null_share(in_test, "workclass", "Moonlighting", "test")
    assert f"{100 * share:.2f}% of the non-null values of the test rows" in line and "'Moonlighting' x250" in line, line


def test_numbers_outside_the_champions_range_block_on_the_open_side_only(project: Path) -> None:
    reference = adult_snapshot(project)
    md5 = champion_on(project, reference)
    main = reference[reference[SOURCE_COLUMN] == "main"]
    top = int(main["fnlwgt"].max())
    assert main["age"].max() < 95
    batch = with_value(adult_snapshot(project, main_from=2500), "fnlwgt", 5_000_000, 0.05)
    batch = with_value(batch, "age", 95, 0.05)  # outside the champion's ages, inside the declared 16..100: passes
    put_snapshot(project, batch)
    ctx, _ = context(project)
    with pytest.raises(DataValidationError) as caught:
        validate(ctx)
    (line,) = [line for line in str(caught.value).splitlines() if "'fnlwgt'" in line]
    assert (
        f"ExpectColumnValuesToBeBetween failed (rule: champion domain: values <= {top} (the range of the champion's"
        in line
    ), line
    assert "declares no max" in line and "validate.domains.max_out_of_range_fraction" in line, line
    assert "5.00% of the non-null values of the main rows (125 of 2500) are outside the champion's range" in line, line
    assert "e.g. [5000000 x125]" in line and f"DVC md5 {md5}" in line, line
    assert [f["column"] for f in caught.value.failures] == ["fnlwgt"], caught.value.failures


def test_action_warn_logs_the_share_and_passes(project: Path, caplog) -> None:
    champion_on(project, adult_snapshot(project))
    put_snapshot(project, with_value(adult_snapshot(project, main_from=2500), "occupation", "Astronaut", 0.30))
    ctx, _ = context(project, ["validate.domains.action=warn"])
    with caplog.at_level(logging.WARNING, logger="tasks.validate"):
        validate(ctx)
    report = json.loads((project / VALIDATION).read_text())
    assert report["success"] and report["warned"] >= 1 and report["domains"]["action"] == "warn"
    assert "warning (not blocking)" in caplog.text and "'Astronaut' x750" in caplog.text, caplog.text
    ctx, _ = context(project, ["validate.domains.action=off"])
    validate(ctx)
    report = json.loads((project / VALIDATION).read_text())
    assert report["domains"] == {"status": "off", "action": "off"}
    assert not [c for c in report["checks"] if c.get("reference")] and report["warned"] == 1, "drift's warning only"
