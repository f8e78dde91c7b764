"""End to end: a stage's code identity is derived from its imports, and cache restores are verified.

One small project (real Prefect, DVC, MLflow in temp dirs): after a first run, editing a module re-runs exactly
the stages that import it; an edited cache record or a corrupted DVC cache object makes the stage re-run,
the bad object is replaced, and dvc.lock records only outputs the stage produced.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from adapters.dvc_store import file_md5, open_repo
from flows.cli import main
from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e
SPLIT_OUTS = ("data/processed/train.parquet", "data/processed/valid.parquet", "data/processed/test.parquet")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> Path:
    params = small_params(candidates={"families": ["lightgbm", "logreg"]})
    root = make_project(tmp_path_factory.mktemp("integrity") / "proj", params)
    return root


def run(root: Path, use_root, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`retrain run --json` in the project; each stage's status."""
    use_root(root)
    code = main(["run", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary.get("promotion_message") or summary
    return {s["name"]: s["status"] for s in summary["stages"]}


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


def test_first_run_then_an_unchanged_rerun_is_cached(project: Path, use_root, capsys) -> None:
    assert set(run(project, use_root, capsys).values()) == {"ran"}
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
