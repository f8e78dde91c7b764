"""Given the stage records in code, dvc.yaml must be exactly what they generate; code deps are derived."""

from __future__ import annotations

import ast
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from engine.codedeps import PACKAGES, code_files
from engine.stage import Plot, check_dag, dvc_pipeline, find_stage, render_path, upstream
from flows.dag import DAG
from retrain.config import load_params, lookup, params_dict

REPO = Path(__file__).resolve().parents[2]
ENGINE = ("engine",)


def test_dvc_yaml_matches_stage_table() -> None:
    on_disk = yaml.safe_load((REPO / "dvc.yaml").read_text())
    values = params_dict(load_params(REPO / "params.yaml"))
    assert on_disk == dvc_pipeline(DAG, REPO, values), (
        "dvc.yaml is stale: run `make dvc-yaml` (retrain stages --dvc-yaml)"
    )


def test_stage_order_is_the_dag() -> None:
    names = tuple(s.name for s in DAG)
    assert names == ("ingest", "version", "validate", "split", "baselines", "candidates", "evaluate", "promote")
    check_dag(DAG)  # every workspace input written by an earlier stage, one writer per file


def test_a_table_that_is_not_a_dag_is_refused_naming_the_stage_and_file() -> None:
    split, version = find_stage(DAG, "split"), find_stage(DAG, "version")
    with pytest.raises(
        ValueError, match=r"stage split: input data/raw/snapshot.parquet is written by no earlier stage"
    ):
        check_dag([split, *DAG])
    with pytest.raises(ValueError, match=r"output data/raw/version.json is already written by stage version"):
        check_dag([*DAG, replace(version, name="again")])


def test_params_keys_exist_and_each_stage_is_its_own_module() -> None:
    params = load_params(REPO / "params.yaml")
    for stage in DAG:
        for key in stage.params:
            lookup(params, key)  # raises if the key is not in params.yaml
        assert stage.module == f"tasks.{stage.name}", "one task module per stage, same name"
        for rel in stage.code(REPO):
            assert (REPO / rel).is_file(), f"{stage.name}: derived code file {rel} does not exist"


def test_code_deps_follow_imports_transitively() -> None:
    split = find_stage(DAG, "split").code(REPO)
    assert "retrain/data/ingest.py" in split, "split uses retrain.data.split, which imports retrain.data.ingest"
    assert "tasks/split.py" in split and "retrain/data/split.py" in split
    candidates = find_stage(DAG, "candidates").code(REPO)
    assert "retrain/models/calibrator.py" in candidates, "imported inside a function body, still a dependency"
    evaluate = find_stage(DAG, "evaluate").code(REPO)
    assert {"retrain/evaluation/gates.py", "retrain/evaluation/templates/model_card.html.j2"} <= set(evaluate), (
        "RESOURCES count too"
    )
    for stage in DAG:
        used = stage.code(REPO)
        assert not any(f.startswith("flows/") for f in used), f"{stage.name}: a stage never imports the wiring"
        assert "engine/runner.py" not in used and "engine/pipeline.py" not in used, f"{stage.name} imports the runner"


def test_a_module_no_stage_imports_is_in_no_stage(tmp_path: Path) -> None:
    everything = {f for stage in DAG for f in stage.code(REPO)}
    assert "flows/cli.py" not in everything and "engine/runner.py" not in everything


def test_code_deps_see_edits_and_skip_type_checking_imports(tmp_path: Path) -> None:
    for package in ("retrain", "tasks"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "retrain" / "a.py").write_text("X = 1\n")
    (tmp_path / "retrain" / "b.py").write_text("Y = 2\n")
    stage = tmp_path / "tasks" / "s.py"
    stage.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from retrain import b\n")
    assert "retrain/b.py" not in code_files(tmp_path, "tasks.s"), "a TYPE_CHECKING import never runs"
    stage.write_text("def run():\n    from retrain.a import X\n    return X\n")
    assert "retrain/a.py" in code_files(tmp_path, "tasks.s"), "a function-level import is a dependency"
    assert code_files(tmp_path, "tasks.s") == ("retrain/__init__.py", "retrain/a.py", "tasks/__init__.py", "tasks/s.py")


def test_upstream_is_what_runs_before() -> None:
    assert [s.name for s in upstream(DAG, find_stage(DAG, "version"))] == ["ingest"]
    with pytest.raises(KeyError, match="stages are ingest, version"):
        find_stage(DAG, "nope")


def test_the_engine_never_names_a_stage() -> None:
    names = {s.name for s in DAG}
    for path in sorted((REPO / "engine").glob("*.py")):
        strings = {
            n.value
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        assert not strings & names, f"{path.name} tests stage names {sorted(strings & names)}: use the stage record"


def test_packages_are_the_project_layout() -> None:
    for package in PACKAGES:
        assert (REPO / package / "__init__.py").is_file(), package
    modules = sorted(p.stem for p in (REPO / "tasks").glob("*.py") if p.stem != "__init__")
    assert modules == sorted(s.name for s in DAG), "tasks/ holds exactly the stage modules"


def test_render_path_fills_and_drops_unset() -> None:
    values = {"ingest": {"source": "a.csv", "test_source": None}}
    assert render_path("${ingest.source}", values) == "a.csv"
    assert render_path("${ingest.test_source}", values) is None
    assert render_path("data/x.parquet", values) == "data/x.parquet"


def test_dvc_yaml_declares_metrics_and_plots_as_small_git_tracked_files() -> None:
    document = dvc_pipeline(DAG, REPO, params_dict(load_params(REPO / "params.yaml")))
    evaluate, promote = document["stages"]["evaluate"], document["stages"]["promote"]
    assert evaluate["metrics"] == [{"reports/evaluate/metrics.json": {"cache": False}}]
    assert promote["metrics"] == [{"reports/promote/promotion.json": {"cache": False}}]
    plot_outs = {next(iter(o)): o[next(iter(o))] for o in evaluate["outs"] if isinstance(o, dict)}
    assert set(plot_outs) == {p.path for p in find_stage(DAG, "evaluate").plots}
    assert all(props == {"cache": False} for props in plot_outs.values()), "plot files are git-tracked, not cached"
    assert "plots" not in evaluate, "a stage-level `plots` entry would make `dvc plots show` draw each plot twice"
    titles = [next(iter(entry)) for entry in document["plots"]]
    assert len(titles) == len(set(titles)), f"plot ids must be unique: {titles}"
    drawn = {}
    for entry in document["plots"]:
        props = next(iter(entry.values()))
        assert props["template"] and props["x"], entry
        ((path, fields),) = props["y"].items()
        drawn[path] = fields
    assert set(drawn) == set(plot_outs), "every plot file is drawn, and only those"
    assert drawn["reports/evaluate/plots/learning_curve.json"] == ["train", "valid"], "two lines: train and valid"
    assert drawn["reports/evaluate/plots/roc.json"] == "tpr"


def test_metrics_and_plot_files_overlap_no_out_directory_and_are_not_git_ignored() -> None:
    import subprocess

    reports = [f for stage in DAG for f in (*stage.metrics, *(p.path for p in stage.plots))]
    assert reports, "some stage declares metrics or plots"
    outs = [o for stage in DAG for o in stage.outs]
    for path in reports:
        inside = [o for o in outs if path.startswith(o.rstrip("/") + "/")]
        assert not inside, f"{path} lies inside the out {inside}: DVC refuses overlapping outputs"
    ignored = subprocess.run(["git", "check-ignore", *reports], cwd=REPO, capture_output=True, text=True).stdout
    assert not ignored.strip(), f"git ignores {ignored.split()}: an experiment commit would not carry them"


def test_stage_files_cover_metrics_and_plots_and_one_writer_each() -> None:
    evaluate = find_stage(DAG, "evaluate")
    assert set(evaluate.files) == {*evaluate.outs, *evaluate.metrics, *(p.path for p in evaluate.plots)}
    clash = replace(find_stage(DAG, "baselines"), metrics=("reports/evaluate/metrics.json",))
    with pytest.raises(ValueError, match=r"output reports/evaluate/metrics.json is already written by stage baselines"):
        check_dag([*DAG[:4], clash, *DAG[5:]])


def test_a_plot_with_several_fields_draws_one_line_per_field() -> None:
    plot = Plot("r/curve.json", "Curve", "rows", ("train", "valid"), "linear", "rows", "score")
    assert plot.definition() == {
        "Curve": {
            "template": "linear",
            "x": "rows",
            "y": {"r/curve.json": ["train", "valid"]},
            "x_label": "rows",
            "y_label": "score",
        }
    }
    assert Plot("r/roc.json", "ROC", "fpr", ("tpr",)).definition() == {
        "ROC": {"template": "linear", "x": "fpr", "y": {"r/roc.json": "tpr"}}
    }


@pytest.mark.slow
def test_a_params_file_without_test_source_gets_a_dvc_yaml_dvc_can_read(tmp_path: Path) -> None:
    """`retrain init` writes `test_source: null`; DVC cannot interpolate it into the shipped dvc.yaml, so the flow
    regenerates dvc.yaml for the params before committing dvc.lock (flows/dag.py sync_dvc_yaml)."""
    from flows.dag import sync_dvc_yaml
    from tests.conftest import make_project, small_params

    root = make_project(tmp_path / "proj", small_params(ingest={"test_source": None}))
    stage_list = ["dvc", "stage", "list"]
    stale = subprocess.run(stage_list, cwd=root, capture_output=True, text=True)
    assert stale.returncode != 0, "DVC accepted ${ingest.test_source} = null: the regeneration may be unneeded"
    params = load_params(root / "params.yaml")
    assert sync_dvc_yaml(root, params), "a stale dvc.yaml must be rewritten"
    assert "${ingest.test_source}" not in (root / "dvc.yaml").read_text(), "the null test source is still a dep"
    fresh = subprocess.run(stage_list, cwd=root, capture_output=True, text=True)
    assert fresh.returncode == 0, f"DVC cannot read the regenerated dvc.yaml:\n{fresh.stderr[-2000:]}"
    assert not sync_dvc_yaml(root, params), "an up-to-date dvc.yaml must be left alone"
