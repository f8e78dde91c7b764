"""End to end: after a real flow run, every MLflow run and the champion carry data hash, DVC remote and git
commit, and `retrain data restore` brings the champion's training snapshot back from the DVC remote with its
md5 checked. A database source that cannot be hashed re-runs ingest every time, and the flow still caches
everything after it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow

from adapters.dvc_store import file_md5
from flows.cli import main
from retrain.catalog import SNAPSHOT, VERSION
from retrain.config import Params
from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e
MODEL = "adult-income"
LINEAGE_TAGS = ("retrain.data_hash", "retrain.dvc_remote", "retrain.dvc_remote_url", "retrain.git_commit")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> Iterator[Path]:
    """A project on which the flow has run once (promoting a champion)."""
    root = make_project(tmp_path_factory.mktemp("lineage") / "proj", small_params())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRAIN_ROOT", str(root))
        mp.chdir(root)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["run", "--json"])
        assert code == 0, out.getvalue()[-2000:]
        yield root


def client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def remote_object(root: Path, md5: str) -> Path:
    return root.parent / f"{root.name}-remote" / "files/md5" / md5[:2] / md5[2:]


def git_head(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def test_every_run_and_the_champion_carry_restorable_lineage(project: Path) -> None:
    md5 = file_md5(project / SNAPSHOT)
    remote_url = str(project.parent / f"{project.name}-remote")
    expected = {"retrain.data_hash": md5, "retrain.dvc_remote": "local", "retrain.dvc_remote_url": remote_url}
    mlflow = client(project)
    experiment = mlflow.get_experiment_by_name(small_params()["tracking"]["experiment"])
    runs = mlflow.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    assert {k: parent.data.tags.get(k) for k in expected} == expected, parent.data.tags
    assert parent.data.tags["retrain.git_commit"].startswith(git_head(project)), parent.data.tags
    stages = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "retrain.stage" in r.data.tags
    ]
    assert {r.data.tags["retrain.stage"] for r in stages} >= {"ingest", "version", "validate", "promote"}
    for run in stages:
        missing = [k for k in LINEAGE_TAGS if not run.data.tags.get(k)]
        assert not missing, f"stage run {run.data.tags['retrain.stage']} lacks {missing}"
        assert run.data.tags["retrain.data_hash"] == md5, run.data.tags["retrain.stage"]
    version = mlflow.get_model_version_by_alias(MODEL, "champion")
    assert {k: version.tags.get(k) for k in expected} == expected, version.tags
    assert version.tags["retrain.git_commit"].startswith(git_head(project)), version.tags
    record = json.loads((project / VERSION).read_text())
    assert record["remote"] == {"name": "local", "url": remote_url} and record["md5"] == md5, record


def restore(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["data", "restore", *args])
    return code, capsys.readouterr().out


def test_restore_fetches_the_champion_data_from_the_remote(project: Path, use_root, capsys, tmp_path: Path) -> None:
    use_root(project)
    shutil.rmtree(project / ".dvc/cache")
    version = client(project).get_model_version_by_alias(MODEL, "champion")
    code, out = restore([f"{MODEL}@champion", str(tmp_path / "restored")], capsys)
    assert code == 0, out
    restored = tmp_path / "restored" / "snapshot.parquet"
    assert file_md5(restored) == version.tags["retrain.data_hash"], "restored bytes are the version's data"
    lineage = json.loads((tmp_path / "restored" / "lineage.json").read_text())
    assert lineage["fetched_from"] == "DVC remote local", "the local cache was deleted: it came from the remote"
    assert lineage["version"] == str(version.version) and lineage["git_commit"] == version.tags["retrain.git_commit"]
    assert lineage["params_hash"] == version.tags["retrain.params_hash"] and lineage["rows"] > 0, lineage
    assert f"restored {MODEL} version {version.version} (alias champion)" in out and "md5 verified" in out, out


def test_restore_by_number_or_uri_from_the_local_cache(project: Path, use_root, capsys, tmp_path: Path) -> None:
    use_root(project)
    version = client(project).get_model_version_by_alias(MODEL, "champion").version
    for ref in (f"{MODEL}/{version}", f"models:/{MODEL}@champion"):
        code, out = restore([ref, str(tmp_path / ref.replace("/", "_"))], capsys)
        assert code == 0, out
        assert "from      local DVC cache" in out, out


def test_unknown_model_alias_or_remote_exits_2(project: Path, use_root, capsys, caplog, tmp_path: Path) -> None:
    use_root(project)
    cases = {
        f"{MODEL}@nope": "has no alias 'nope' (aliases: {",  # champion and challenger
        "no-such-model@champion": "model 'no-such-model' is not registered",
        f"{MODEL}/99": "has no version 99",
        "just-a-name": "give MODEL@ALIAS, MODEL/VERSION",
    }
    for ref, message in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code, _ = restore([ref, str(tmp_path / "x")], capsys)
        assert code == 2 and message in caplog.text, (ref, code, caplog.text)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code, _ = restore([f"{MODEL}@champion", str(tmp_path / "x"), "--remote", "elsewhere"], capsys)
    assert code == 2 and "DVC remote 'elsewhere' is not configured" in caplog.text, caplog.text
    assert not (tmp_path / "x" / "snapshot.parquet").exists()


def test_hash_mismatch_exits_1_naming_both_hashes(project: Path, use_root, capsys, caplog, tmp_path: Path) -> None:
    use_root(project)
    md5 = client(project).get_model_version_by_alias(MODEL, "champion").tags["retrain.data_hash"]
    shutil.rmtree(project / ".dvc/cache")
    stored = remote_object(project, md5)
    original = stored.read_bytes()
    # silent corruption: DVC re-hashes writable objects itself, so keep the read-only mode it trusts
    rewrite(stored, original[:-1] + b"\0")
    try:
        with caplog.at_level(logging.ERROR):
            code, out = restore([f"{MODEL}@champion", str(tmp_path / "bad")], capsys)
    finally:
        rewrite(stored, original)
    actual = file_md5_bytes(original[:-1] + b"\0")
    assert code == 1, out
    assert md5 in caplog.text and actual in caplog.text, caplog.text
    assert not (tmp_path / "bad" / "snapshot.parquet").exists(), "corrupted bytes must not be written as the snapshot"


def rewrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)
    path.chmod(0o444)


def file_md5_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def test_database_source_reruns_ingest_but_the_rest_stays_cached(
    tmp_path: Path, prefect_backend: None, use_root
) -> None:
    """`sqlite://` (in memory) cannot be hashed before querying: ingest's cache key is None every time."""
    from engine.pipeline import PipelineRun
    from flows.dag import DAG
    from tasks import ingest, version

    query = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400) "
        "SELECT i % 37 AS age, CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END AS kind, "
        "CASE WHEN i % 4 = 0 THEN '>50K' ELSE '<=50K' END AS income FROM n"
    )
    raw: dict[str, Any] = small_params(
        ingest={"source": "sqlite://", "query": query, "test_source": None, "test_query": None, "sample_rows": None},
        dataset={"columns": None, "labels": None, "protected": [], "slices": []},
    )
    root = use_root(make_project(tmp_path / "db", raw))
    params = Params.model_validate(raw)

    @flow(name="ingest-twice")
    def ingest_twice() -> list[tuple[str, str]]:
        run = PipelineRun.start(root, params, DAG, "cli", commit_lineage=False, flow_run_id=None)
        for _ in range(2):
            run.stage(ingest.STAGE)
            run.stage(version.STAGE)
        run.finish("FINISHED")
        return [(s.name, s.status) for s in run.stages]

    statuses = ingest_twice()
    assert statuses == [("ingest", "ran"), ("version", "ran"), ("ingest", "ran"), ("version", "cached")], statuses
    schema = json.loads((root / "data/raw/schema.json").read_text())
    assert schema["columns"]["age"]["type"] == "int" and schema["labels"] == ["<=50K", ">50K"], schema
