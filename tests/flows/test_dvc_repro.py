"""`dvc repro` runs the same stages through `retrain stage NAME`, and shares the Prefect cache."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adapters.dvc_store import file_md5
from flows.cli import main
from tests.conftest import OPTIONAL_GATES, gates_off, make_project, small_params
from tests.flows.mlflow_checks import assert_dvc_repro_shares_one_parent, assert_parent_carries_the_run

pytestmark = pytest.mark.e2e


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_ROOT"}
    return subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, env=env, timeout=900)


def test_dvc_repro_runs_the_pipeline_then_the_flow_hits_the_cache(
    tmp_path: Path, prefect_backend, use_root, capsys
) -> None:
    # one family: this checks DVC (repro, metrics, plots, experiments), the families have their own tests; the
    # gates it reads (metric_bounds, beats_baselines, slices; calibration draws its plot) stay on, the rest are
    # off (each has its own tests): evaluate runs twice here, once under `dvc repro`, once under `dvc exp run`
    params = small_params(
        candidates={"families": ["lightgbm"]},
        evaluate=gates_off(tuple(g for g in OPTIONAL_GATES if g not in ("slices", "calibration"))),
    )
    root = make_project(tmp_path / "proj", params)
    result = dvc(root, "repro")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("ingest", "version", "validate", "split", "baselines", "candidates", "evaluate", "promote"):
        assert f"Running stage '{stage}'" in result.stdout + result.stderr, f"dvc repro did not run {stage}"
    champion = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_model_version_by_alias("adult-income", "champion")
    assert champion.tags["retrain.data_hash"] == file_md5(root / "data/raw/snapshot.parquet")
    status = dvc(root, "status", "--json")
    assert json.loads(status.stdout) == {}, status.stdout

    use_root(root)
    code = main(["run", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    cached = {s["name"]: s["status"] for s in summary["stages"]}
    assert cached == {**{n: "cached" for n in cached}, "promote": "ran"}, "the flow reuses what dvc repro produced"
    assert summary["promotion"] == "already_champion"
    # --- the stages of that one `dvc repro` share one MLflow parent run that carries it (mlflow_checks.py) ---
    stages = ("ingest", "version", "validate", "split", "baselines", "candidates", "evaluate", "promote")
    parent = assert_dvc_repro_shares_one_parent(root, stages)
    assert_parent_carries_the_run(root, parent, summary["metric"], "promoted")

    # --- DVC shows the run, and an experiment is saved without touching the registry ---
    dvc_shows_the_run(root)
    an_experiment_is_saved_and_never_touches_the_registry(root)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def dvc_shows_the_run(root: Path) -> None:
    """`dvc metrics show` lists the headline, every gate and the decision; `dvc plots show` draws the plots."""
    shown = dvc(root, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    metrics = json.loads(shown.stdout)[""]["data"]
    evaluated = metrics["reports/evaluate/metrics.json"]["data"]
    assert evaluated["decision"] == "promote" and evaluated["failed"] == 0, evaluated
    assert 0.5 < evaluated["test"] <= 1 and 0.5 < evaluated["valid"] <= 1, evaluated
    assert {"metric_bounds", "beats_baselines", "slices"} <= set(evaluated["gates"]), evaluated["gates"]
    assert evaluated["gates"]["metric_bounds"]["pass"] == 1 and evaluated["gates"]["metric_bounds"]["limit"] == 0.85
    assert metrics["reports/promote/promotion.json"]["data"]["action"] == "already_champion"
    plots = dvc(root, "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr[-2000:]
    drawn = {title for title, renders in json.loads(plots.stdout)["data"].items() if renders}
    expected = {"ROC (test)", "Precision-recall (test)", "Calibration (test)", "Learning curve (chosen family)"}
    assert expected | {"Metric per slice (test)"} <= drawn, f"plots drawn: {sorted(drawn)}"


def an_experiment_is_saved_and_never_touches_the_registry(root: Path) -> None:
    """`dvc exp run` whose candidate a gate rejects exits 0, is saved with its decision, and registers nothing."""
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the pipeline's run")
    head, params_before = git(root, "rev-parse", "HEAD"), (root / "params.yaml").read_text()
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("adult-income", "champion").version
    versions = {v.version for v in client.search_model_versions("name='adult-income'")}

    run = dvc(root, "exp", "run", "-S", "evaluate.gates.slices.max_gap=0.001")  # every slice gap fails
    assert run.returncode == 0, f"a rejected experiment must still be saved: {run.stderr[-3000:]}"
    (name,) = dvc(root, "exp", "list", "--name-only").stdout.split()
    (baseline,) = [b for b in json.loads(dvc(root, "exp", "show", "--json").stdout) if b["rev"] == head]
    (saved,) = [r for e in baseline["experiments"] for r in e["revs"] if r["name"] == name]
    metrics = saved["data"]["metrics"]
    evaluated = metrics["reports/evaluate/metrics.json"]["data"]
    assert evaluated["decision"] == "reject" and evaluated["gates"]["slices"]["pass"] == 0, evaluated
    would = {"action": "would_reject", "experiment": name, "champion": str(champion), "challenger": str(champion)}
    assert metrics["reports/promote/promotion.json"]["data"] == would, "DVC leaves out the null version"
    assert saved["data"]["params"]["params.yaml"]["data"]["evaluate"]["gates"]["slices"]["max_gap"] == 0.001

    assert client.get_model_version_by_alias("adult-income", "champion").version == champion, "champion moved"
    assert {v.version for v in client.search_model_versions("name='adult-income'")} == versions, "a version registered"
    (promote,) = client.search_runs(
        [client.get_experiment_by_name("retrain-adult").experiment_id],
        f"tags.`retrain.dvc_experiment` = '{name}'",
    )
    assert promote.data.tags["retrain.promotion"] == "would_reject"
    assert git(root, "rev-parse", "HEAD") == head, "the experiment is a ref of its own, not a commit on the branch"
    assert git(root, "show", "HEAD:params.yaml") + "\n" == params_before, "the baseline's params.yaml is unchanged"
    status = dvc(root, "status", "--json")
    assert json.loads(status.stdout) == {}, f"DVC applies the experiment to the workspace: {status.stdout}"
