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
from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_ROOT"}
    return subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, env=env, timeout=900)


def test_dvc_repro_runs_the_pipeline_then_the_flow_hits_the_cache(
    tmp_path: Path, prefect_backend, use_root, capsys
) -> None:
    root = make_project(tmp_path / "proj", small_params())
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
