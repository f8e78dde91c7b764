"""Given stage contexts, cache keys depend on content (data, params read, code) and never on paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from adapters.jsonfile import write_json
from engine.codedeps import PACKAGES
from engine.context import StageContext, Tracking, tree_md5
from engine.stage import find_stage
from flows.dag import DAG
from retrain.config import load_params

REPO = Path(__file__).resolve().parents[2]
TRACKING = Tracking("sqlite:///unused.db", "0", None)


def copy_project(dest: Path) -> Path:
    for rel in (*PACKAGES, "data/source"):
        shutil.copytree(REPO / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "requirements.lock", dest / "requirements.lock")
    return dest


def ctx(root: Path, stage: str = "ingest", overrides: list[str] | None = None) -> StageContext:
    return StageContext(find_stage(DAG, stage), load_params(REPO / "params.yaml", overrides), root, TRACKING)


def test_same_content_at_different_paths_gives_same_key(tmp_path: Path) -> None:
    a, b = copy_project(tmp_path / "a"), copy_project(tmp_path / "elsewhere" / "b")
    assert ctx(a).cache_key() == ctx(b).cache_key()


def test_touching_a_file_does_not_change_the_key(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    before = ctx(root).cache_key()
    os.utime(root / "data/source/adult_train.csv.gz", (1, 1))
    assert ctx(root).cache_key() == before


def test_data_change_changes_the_key(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    before = ctx(root).cache_key()
    with (root / "data/source/adult_test.csv.gz").open("ab") as handle:
        handle.write(b"\0")
    assert ctx(root).cache_key() != before


def test_only_params_the_stage_reads_change_its_key(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    base = ctx(root).cache_key()
    assert ctx(root, overrides=["candidates.n_trials=99"]).cache_key() == base, "ingest does not read candidates.*"
    assert ctx(root, overrides=["ingest.sample_rows=10"]).cache_key() != base


def test_code_change_changes_the_key(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    base = ctx(root).cache_key()
    with (root / "retrain/data/ingest.py").open("a") as handle:
        handle.write("\n# changed\n")
    assert ctx(root).cache_key() != base


def test_external_input_is_part_of_the_key(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "p")
    a = StageContext(find_stage(DAG, "ingest"), ctx(root).params, root, TRACKING, {"champion": "none"})
    b = StageContext(find_stage(DAG, "ingest"), ctx(root).params, root, TRACKING, {"champion": "abc"})
    assert a.cache_key() != b.cache_key()


def test_tree_md5_is_content_only(tmp_path: Path) -> None:
    write_json(tmp_path / "x" / "a.json", {"k": 1})
    write_json(tmp_path / "y" / "a.json", {"k": 1})
    assert tree_md5(tmp_path / "x") == tree_md5(tmp_path / "y")
    write_json(tmp_path / "y" / "b.json", {})
    assert tree_md5(tmp_path / "x") != tree_md5(tmp_path / "y")
