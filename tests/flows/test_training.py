"""End to end: the real flow (real Prefect, DVC, GX, MLflow in temp dirs) on a few thousand Adult rows."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adapters.dvc_store import file_md5, open_repo
from adapters.mlflow_links import artifact_url, model_version_url, run_url, ui_base
from flows.cli import main
from tests.conftest import make_project, small_params
from tests.flows.mlflow_checks import assert_parent_carries_the_run
from tests.flows.prefect_outcome import outcome_markdown, state_history

pytestmark = pytest.mark.e2e
MODEL = "adult-income"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> Path:
    serving_on = {"gates": {"serving": {"enabled": True}}}  # the suite's one e2e run of the fresh-process check
    return make_project(tmp_path_factory.mktemp("flow") / "proj", small_params(evaluate=serving_on))


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    """`retrain run --json --force ARGS` (--force: the flow even when nothing changed; the no-op has its own tests)."""
    code = main(["run", "--json", "--force", *args])
    out = capsys.readouterr().out
    assert out.strip(), f"no --json output (exit {code})"
    try:
        return code, json.loads(out)
    except ValueError:
        raise AssertionError(f"stdout is not one JSON document: {out[:500]!r}") from None


def statuses(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


def test_first_run_promotes_a_champion_with_lineage(project: Path, use_root, capsys, monkeypatch, caplog) -> None:
    use_root(project)
    caplog.set_level(logging.INFO, logger="flows.outcome")
    monkeypatch.chdir(project.parent)  # RETRAIN_ROOT names the project; the working directory is elsewhere
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # small data: short family runs
    code, summary = run_cli([], capsys)
    assert code == 0, summary
    assert set(statuses(summary).values()) == {"ran"}, statuses(summary)
    verdicts = summary["families"]
    families = set(small_params()["candidates"]["families"])
    assert set(verdicts) == families and all(v["beats_baselines"] for v in verdicts.values()), verdicts
    version = client(project).get_model_version_by_alias(MODEL, "champion")
    data_hash = file_md5(project / "data/raw/snapshot.parquet")
    assert version.tags["retrain.data_hash"] == data_hash, "champion carries the DVC hash of its data"
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    record = mlflow.artifacts.load_dict(version.tags["retrain.gate_record"])
    assert record["decision"] == "promote" and record["data_hash"] == data_hash
    assert {g["name"] for g in record["gates"]} >= {"beats_baselines", "no_regression_vs_champion"}
    status = {g["name"]: g["status"] for g in record["gates"]}
    assert set(status.values()) <= {"pass", "skipped"} and status["serving"] == "pass", status
    assert (project.parent / "proj-remote" / "files/md5" / data_hash[:2] / data_hash[2:]).is_file(), "pushed to remote"
    rows = pd.read_parquet(project / "data/processed/test.parquet").head(5).drop(columns=["income"])
    scores = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(rows)
    assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores), "served P(>50K) for raw rows"
    dvc_status = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True, check=True)
    assert json.loads(dvc_status.stdout) == {}, f"dvc status not clean after the flow: {dvc_status.stdout}"
    [family_run] = client(project).search_runs(
        [client(project).get_run(version.run_id).info.experiment_id],
        filter_string="attributes.run_name = 'candidates/lightgbm'",
    )  # in the project's experiment, next to its parent stage run
    cpu = client(project).get_metric_history(family_run.info.run_id, "system/cpu_utilization_percentage")
    assert cpu, "MLflow samples CPU and memory during each family's run"
    parent = client(project).get_run(summary["mlflow_run_id"])
    assert_parent_carries_the_run(project, parent, summary["metric"], "promoted")
    assert parent.info.run_name == "pipeline-cli" and parent.info.status == "FINISHED", parent.info
    # the Prefect flow run: state named after the decision, the outcome artifact with gates and links
    flow_run_id = summary["prefect_flow_run_id"]
    kind, name, message = state_history(flow_run_id)[-1]
    assert (kind, name) == ("COMPLETED", "Promoted"), f"final state {kind} {name}: {message}"
    assert f"{MODEL} version {version.version} is champion now" in message, message
    markdown = outcome_markdown(flow_run_id)
    assert markdown.startswith(f"## Promoted: {MODEL}") and "- decision: **promote**" in markdown, markdown[:500]
    for gate in record["gates"]:
        assert f"| {gate['name']} | " in markdown, f"gate {gate['name']} missing from the artifact:\n{markdown}"
    for family in families:
        assert f"| {family} | " in markdown, f"candidate {family} missing from the artifact"
    base, _ = ui_base(summary["tracking_uri"], None, project)
    experiment = summary["mlflow_experiment_id"]
    links = {
        "MLflow parent run": run_url(base, experiment, summary["mlflow_run_id"]),
        "model version": model_version_url(base, MODEL, version.version),
        "model card": artifact_url(base, experiment, version.run_id, "model_card.html"),  # the promote stage run
    }
    for label, url in links.items():
        assert f"- {label}: [{url}]({url})" in markdown, f"{label} link missing from the artifact:\n{markdown}"
        assert f"{label}: {url}" in caplog.text, f"{label} link not logged"
    card = client(project).list_artifacts(version.run_id)
    assert "model_card.html" in {a.path for a in card}, "the model card link points at a logged artifact"


def test_rerun_is_all_cache_hits_and_registers_nothing(project: Path, use_root, capsys) -> None:
    use_root(project)
    before = client(project).search_model_versions(f"name = '{MODEL}'")
    code, summary = run_cli([], capsys)
    assert code == 0
    expected = {name: "cached" for name in statuses(summary)} | {"promote": "ran"}
    assert statuses(summary) == expected
    assert summary["promotion"] == "already_champion"
    after = client(project).search_model_versions(f"name = '{MODEL}'")
    assert len(after) == len(before), "an unchanged rerun must not add a model version"
    kind, name, message = state_history(summary["prefect_flow_run_id"])[-1]
    assert (kind, name) == ("COMPLETED", "Kept") and "already champion" in message, (kind, name, message)
    assert outcome_markdown(summary["prefect_flow_run_id"]).startswith(f"## Kept: {MODEL}"), "the run's own artifact"


def test_an_unchanged_rerun_is_a_no_op_and_a_scheduled_one_is_recorded(project, use_root, capsys, monkeypatch) -> None:
    """Nothing changed since the (forced) rerun above: `retrain run` stops before the flow (engine/noop.py); a
    scheduled run still appears in Prefect, in state Unchanged with its artifact, and opens no MLflow run."""
    use_root(project)
    experiment = client(project).get_experiment_by_name("retrain-adult").experiment_id
    runs_before = len(client(project).search_runs([experiment]))
    code = main(["run", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["noop"] is True and summary["promotion"] == "unchanged", summary
    assert summary["prefect_flow_run_id"] is None and summary["mlflow_run_id"] is None, "a CLI no-op starts no run"
    monkeypatch.setenv("RETRAIN_TRIGGER", "schedule")
    code, summary = run_cli([], capsys)
    assert code == 0 and summary["noop"] is True, summary
    kind, name, message = state_history(summary["prefect_flow_run_id"])[-1]
    assert (kind, name) == ("COMPLETED", "Unchanged") and "nothing changed" in message, (kind, name, message)
    assert outcome_markdown(summary["prefect_flow_run_id"]).startswith("## Unchanged"), "the no-op's artifact"
    assert len(client(project).search_runs([experiment])) == runs_before, "a no-op opens no MLflow run"


CACHED_RUN_PROBE = """
import json, sys
from flows.cli import main
code = main(["run", "--json", "--force"])
loaded = sorted(m for m in sys.modules if m.startswith("retrain.") or m.split(".")[0] in LIBRARIES)
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def test_cached_rerun_imports_no_stage_implementation_nor_model_library(project: Path, use_root) -> None:
    """Every stage but promote is a cache hit, answered from its key alone: the run must not pay for their imports.

    The flow imports every stage module for its record (tasks/*.py import their model code inside their
    functions), so what must stay unloaded is the stages' implementation and the libraries under it.
    """
    import os
    import sys

    from prefect.settings import PREFECT_API_URL

    use_root(project)
    libraries = ("lightgbm", "sklearn", "optuna", "great_expectations", "matplotlib", "skops")
    env = os.environ | {"RETRAIN_ROOT": str(project), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    probe = f"LIBRARIES = {libraries!r}" + CACHED_RUN_PROBE
    lock_before = (project / "dvc.lock").stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert {s["name"] for s in summary["stages"] if s["status"] == "ran"} == {"promote"}, summary["stages"]
    implementation = {
        "retrain.data.split",
        "retrain.models.tuning",
        "retrain.models.estimators",
        "retrain.evaluation.policy",
        "retrain.evaluation.modelcard",
        "retrain.evaluation.diagnostics",
    }
    loaded = set(report["loaded"])
    assert not loaded & implementation, f"a cache hit imported stage code: {sorted(loaded & implementation)}"
    heavy = {m for m in loaded if m.split(".")[0] in libraries}
    assert not heavy, f"a cached rerun imported model/validation libraries: {sorted(heavy)[:10]}"
    assert (project / "dvc.lock").stat().st_mtime_ns == lock_before, "dvc.lock already matched: not rewritten"


def test_a_dvc_lock_changed_by_hand_is_rewritten_by_the_next_run(project: Path, use_root, capsys) -> None:
    use_root(project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    lock["stages"]["split"]["outs"][0]["md5"] = "0" * 32
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    code, summary = run_cli([], capsys)
    assert code == 0 and summary["promotion"] == "already_champion", summary
    dvc_status = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True, check=True)
    assert json.loads(dvc_status.stdout) == {}, (
        f"the stamp must not hide a dvc.lock that no longer matches: {dvc_status.stdout}"
    )


def test_changing_one_param_reruns_that_stage_and_what_follows(project: Path, use_root, capsys) -> None:
    use_root(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["candidates"]["n_trials"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code, summary = run_cli([], capsys)
    assert code in (0, 3), summary
    got = statuses(summary)
    upstream = ("ingest", "version", "validate", "split", "baselines")
    assert all(got[s] == "cached" for s in upstream), got
    assert got["candidates"] == "ran", got


def test_missing_target_column_exits_2_and_leaves_champion(project: Path, use_root, capsys, caplog, tmp_path) -> None:
    use_root(project)
    before = client(project).get_model_version_by_alias(MODEL, "champion").version
    n_versions = len(client(project).search_model_versions(f"name = '{MODEL}'"))
    with gzip.open(project / "data/source/adult_train.csv.gz", "rt") as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    bad = tmp_path / "no_income.csv"
    frame.drop(columns=["income"]).head(3000).to_csv(bad, index=False)
    with caplog.at_level(logging.ERROR):
        code = main(["run", "--set", f"ingest.source={bad}"])
    assert code == 2
    assert "missing ['income']" in caplog.text and "no_income.csv" in caplog.text, caplog.text[-2000:]
    assert client(project).get_model_version_by_alias(MODEL, "champion").version == before
    assert len(client(project).search_model_versions(f"name = '{MODEL}'")) == n_versions


def test_gate_rejection_exits_3_and_leaves_champion(project: Path, use_root, capsys) -> None:
    use_root(project)
    before = client(project).get_model_version_by_alias(MODEL, "champion").version
    code, summary = run_cli(["--set", "evaluate.gates.baseline.margin=0.9"], capsys)
    assert code == 3, summary
    assert summary["decision"] == "reject" and "beats_baselines" in summary["failed_gates"], summary
    assert client(project).get_model_version_by_alias(MODEL, "champion").version == before
    kind, name, message = state_history(summary["prefect_flow_run_id"])[-1]
    assert (kind, name) == ("COMPLETED", "Rejected"), f"a rejection is not painted plain Completed: {kind} {name}"
    assert "failed beats_baselines" in message and f"champion stays version {before}" in message, message
    markdown = outcome_markdown(summary["prefect_flow_run_id"])
    [row] = [line for line in markdown.splitlines() if line.startswith("| beats_baselines |")]
    assert "FAIL" in row and "- decision: **reject** (failed: beats_baselines" in markdown, markdown
    assert "- champion (unchanged): " in markdown and f"/versions/{before}]" in markdown, markdown
    assert main(["stage", "promote"]) == 3, "`retrain stage promote` (dvc repro) also exits 3 on a rejected record"
    assert client(project).get_model_version_by_alias(MODEL, "champion").version == before


def test_bad_override_exits_2(project: Path, use_root) -> None:
    use_root(project)
    assert main(["run", "--set", "candidates.n_trails=3"]) == 2


def test_objective_contradicting_the_task_fails_before_any_stage(project: Path, use_root, caplog) -> None:
    use_root(project)
    snapshot = project / "data/raw/snapshot.parquet"
    stamp = lambda: snapshot.stat().st_mtime_ns if snapshot.exists() else None  # noqa: E731
    before = stamp()
    with caplog.at_level(logging.ERROR):
        code = main(["run", "--set", "candidates.lightgbm.fixed.objective=regression"])
    assert code == 2
    assert "candidates.lightgbm.fixed.objective" in caplog.text, caplog.text[-1000:]
    assert stamp() == before, "no stage ran"


def test_unknown_trigger_exits_2_before_any_stage(monkeypatch, caplog) -> None:
    monkeypatch.setenv("RETRAIN_TRIGGER", "cron")
    with caplog.at_level(logging.ERROR):
        assert main(["run"]) == 2, "an unknown trigger is bad input"
    assert "RETRAIN_TRIGGER='cron'" in caplog.text and "schedule" in caplog.text, caplog.text


# --- code identity derived from imports; cache restores verified (engine/codedeps.py, engine/runner.py) ---
# These run last on the module's project: they edit its code and damage its cache records and objects.

SPLIT_OUTS = ("data/processed/train.parquet", "data/processed/valid.parquet", "data/processed/test.parquet")


def run(root: Path, use_root, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`retrain run --json` on the default params; each stage's status."""
    use_root(root)
    code, summary = run_cli([], capsys)
    assert code == 0, summary.get("promotion_message") or summary
    return statuses(summary)


def record_file(root: Path, stage: str) -> Path:
    """The newest cached result record of a stage (named `<stage>-<key>`)."""
    files = sorted((root / ".retrain/cache").glob(f"{stage}-*"), key=lambda p: p.stat().st_mtime)
    assert files, f"no cache record for {stage}"
    return files[-1]


def object_path(root: Path, md5: str) -> Path:
    """Where the local DVC cache keeps the object `md5`."""
    return Path(open_repo(root).cache.local.oid_to_path(md5))


def locked_outs(root: Path, stage: str) -> dict[str, str]:
    """What dvc.lock records as a stage's outputs."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}


def test_an_unchanged_rerun_restores_and_caches_every_stage(project: Path, use_root, capsys) -> None:
    """After the override runs above, the default params run again: every stage from cache but promote."""
    run(project, use_root, capsys)
    again = run(project, use_root, capsys)
    assert {k: v for k, v in again.items() if v == "ran"} == {"promote": "ran"}, again


def test_editing_a_module_reruns_the_stages_that_import_it(project: Path, use_root, capsys) -> None:
    module = project / "retrain/data/ingest.py"
    module.write_text(module.read_text() + "\n# an edit: split imports this module through retrain.data.split\n")
    got = run(project, use_root, capsys)
    assert got["split"] == "ran", f"split imports retrain/data/ingest.py (via retrain.data.split): {got}"
    assert got["ingest"] == "ran" and got["validate"] == "ran", got
    # split's outputs came out byte-identical, so nothing downstream re-runs
    assert got["baselines"] == got["candidates"] == got["evaluate"] == "cached", got


def test_editing_a_module_no_stage_imports_reruns_nothing(project: Path, use_root, capsys) -> None:
    module = project / "flows/deploy.py"
    module.write_text(module.read_text() + "\n# an edit no stage can see\n")
    got = run(project, use_root, capsys)
    assert {k for k, v in got.items() if v == "ran"} == {"promote"}, got


def test_an_edited_cache_record_is_not_trusted(project: Path, use_root, capsys) -> None:
    """The record now claims train.parquet is the snapshot's bytes (an object the DVC cache holds)."""
    record = record_file(project, "split")
    document = json.loads(record.read_text())
    result = json.loads(document["result"])
    expected = result["outs"][SPLIT_OUTS[0]]
    result["outs"][SPLIT_OUTS[0]] = file_md5(project / "data/raw/snapshot.parquet")
    document["result"] = json.dumps(result)
    record.write_text(json.dumps(document))
    (project / SPLIT_OUTS[0]).unlink()
    got = run(project, use_root, capsys)
    assert got["split"] == "ran", f"an edited record must re-run its stage, not restore what it names: {got}"
    assert file_md5(project / SPLIT_OUTS[0]) == expected, "the re-run wrote the real split again"
    assert locked_outs(project, "split")[SPLIT_OUTS[0]] == expected, "dvc.lock holds what split produced"


def test_a_truncated_cache_record_reruns_the_stage(project: Path, use_root, capsys) -> None:
    record = record_file(project, "baselines")
    record.write_text(record.read_text()[:40])
    got = run(project, use_root, capsys)
    assert got["baselines"] == "ran", got


def test_a_corrupted_dvc_cache_object_is_replaced_and_the_stage_reruns(project: Path, use_root, capsys) -> None:
    target = project / SPLIT_OUTS[1]
    md5 = file_md5(target)
    obj = object_path(project, md5)
    assert obj.is_file(), "the split output is in the DVC cache after the run"
    obj.chmod(0o644)
    obj.write_bytes(b"not a parquet file")
    target.unlink()  # the next run must restore valid.parquet from the (now corrupted) object
    got = run(project, use_root, capsys)
    assert got["split"] == "ran", f"a corrupted object cannot be restored: the stage re-runs: {got}"
    assert file_md5(target) == md5, "the re-run produced the same bytes"
    assert file_md5(obj) == md5, "the corrupted object was replaced by the re-run's output"
    assert locked_outs(project, "split")[SPLIT_OUTS[1]] == md5
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}, f"dvc agrees with the workspace: {status.stdout}"
