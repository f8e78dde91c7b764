"""Preflight: every problem of a params file and its data in one report, each with its key path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retrain.config import load_params
from retrain.data.preflight import COLUMN_REFS, preflight

ROWS = 400


@pytest.fixture
def table(tmp_path: Path) -> Path:
    """A small binary table with an ID, a numeric and a category feature and an integer-coded label."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": np.arange(ROWS),
            "age": rng.integers(18, 80, ROWS),
            "city": rng.choice(["north", "south", "east"], ROWS),
            "income": rng.normal(50, 10, ROWS).round(2),
            "y": rng.integers(0, 2, ROWS),
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return path


def write(tmp_path: Path, params: dict, name: str = "p.yaml") -> Path:
    """A params file from a dict."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def minimal(source: Path | str, **dataset: object) -> dict:
    """Only `dataset` and `ingest`: every other section takes its defaults."""
    return {
        "dataset": {"name": "toy", "task": "binary", "target": "y", "positive_label": "1", **dataset},
        "ingest": {"source": str(source)},
    }


def keys(report) -> list[str]:
    """The key paths of a report's problems."""
    return [p.key for p in report.problems]


def test_minimal_params_file_passes_and_gets_every_default(table: Path, tmp_path: Path) -> None:
    report = preflight(write(tmp_path, minimal(table, exclude=["id"])), tmp_path)
    assert report.ok, report.message("p.yaml")
    params = report.params
    assert params is not None
    assert params.evaluate.metric == "roc_auc", "binary default metric"
    assert params.candidates.families == ("lightgbm", "hgb", "logreg"), "binary default families"
    assert params.promote.model_name == "toy" and params.tracking.experiment == "retrain-toy"
    assert params.candidates.family("lightgbm").early_stopping_rounds == 50, "registry default of the family section"
    assert report.sources["ingest.source"]["rows_read"] == ROWS


def test_regression_and_multiclass_defaults(table: Path, tmp_path: Path) -> None:
    regression = minimal(table, task="regression", target="income", positive_label=None)
    del regression["dataset"]["positive_label"]
    params = load_params(write(tmp_path, regression))
    assert params.evaluate.metric == "r2" and "ridge" in params.candidates.families
    assert params.baselines.strategies == ("mean", "median")


def test_two_wrong_columns_and_a_numeric_label_in_one_report(table: Path, tmp_path: Path) -> None:
    params = minimal(table, exclude=["id"], protected=["citty"])
    params["dataset"]["positive_label"] = 1  # unquoted: YAML reads a number
    params["evaluate"] = {"gates": {"directional": {"increasing": ["agee"]}}}
    report = preflight(write(tmp_path, params), tmp_path)
    message = report.message("p.yaml")
    assert keys(report) == [
        "dataset.positive_label",
        "dataset.protected",
        "evaluate.gates.directional.increasing",
    ], message
    assert '"1"' in message and "quote it" in message, "the hint says how to write the label"
    assert "did you mean 'city'" in message and "did you mean 'age'" in message, message
    assert report.params is None, "no params are handed on when anything is wrong"


def test_declared_schema_problems_are_all_listed(table: Path, tmp_path: Path) -> None:
    columns = {"age": {"type": "int"}, "city": {"type": "category"}, "income": {"type": "float"}}
    params = minimal(table, exclude=["id"], columns=columns, slices=["city", "zone"])
    params["candidates"] = {"families": ["lightgbm", "logreg"], "monotone": {"city": 1}}
    params["evaluate"] = {"gates": {"slices": {"bands": {"city": [1, 2]}}, "fairness": {"attributes": ["nope"]}}}
    params["baselines"] = {"strategies": ["heuristic"], "heuristic": {"column": "idd"}}
    report = preflight(write(tmp_path, params), tmp_path)
    got = keys(report)
    for key in (
        "dataset.slices",
        "candidates.monotone",
        "evaluate.gates.slices.bands",
        "evaluate.gates.fairness.attributes",
        "baselines.heuristic.column",
    ):
        assert key in got, f"{key} missing from {report.message('p.yaml')}"


def test_without_data_the_params_still_report_every_gate_column(table: Path, tmp_path: Path) -> None:
    columns = {"age": {"type": "int"}, "city": {"type": "category"}}
    params = minimal(table, exclude=["id"], columns=columns)
    params["evaluate"] = {"gates": {"slices": {"columns": ["x1"]}, "directional": {"increasing": ["x2"]}}}
    with pytest.raises(Exception) as info:
        load_params(write(tmp_path, params))
    text = str(info.value)
    assert "evaluate.gates.slices.columns" in text and "evaluate.gates.directional.increasing" in text, text


def test_a_directory_source_is_not_called_missing(tmp_path: Path) -> None:
    (tmp_path / "batches").mkdir()
    report = preflight(write(tmp_path, minimal(tmp_path / "batches")), tmp_path)
    assert keys(report) == ["ingest.source"]
    assert "is a directory" in report.problems[0].message and "*.csv" in report.problems[0].message


def test_missing_source_and_empty_glob(tmp_path: Path) -> None:
    report = preflight(write(tmp_path, minimal("data/nope.csv")), tmp_path)
    assert "does not exist" in report.problems[0].message
    assert "stage before" not in report.problems[0].message, "no stage hint for a user's source"
    report = preflight(write(tmp_path, minimal("data/*.csv")), tmp_path)
    assert "matches no files" in report.problems[0].message


def test_glob_files_with_other_columns(table: Path, tmp_path: Path) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    frame = pd.read_csv(table)
    frame.to_csv(folder / "1.csv", index=False)
    frame.drop(columns=["city"]).to_csv(folder / "2.csv", index=False)
    report = preflight(write(tmp_path, minimal("b/*.csv", exclude=["id"])), tmp_path)
    assert keys(report) == ["ingest.source"] and "missing ['city']" in report.problems[0].message


def test_sql_source_and_test_source_columns(table: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(table)
    with sqlite3.connect(tmp_path / "d.db") as conn:
        frame.to_sql("t", conn, index=False)
    params = minimal("sqlite:///d.db", exclude=["id"], protected=["city"])
    params["ingest"]["query"] = "SELECT * FROM t"
    frame.drop(columns=["age"]).to_csv(tmp_path / "test.csv", index=False)
    params["ingest"]["test_source"] = "test.csv"
    report = preflight(write(tmp_path, params), tmp_path)
    assert keys(report) == ["ingest.test_source"], report.message("p.yaml")
    assert "['age']" in report.problems[0].message


def test_labels_not_in_the_data_and_override_attribution(table: Path, tmp_path: Path) -> None:
    params = minimal(table, exclude=["id"], labels=["no", "yes"], positive_label="yes")
    report = preflight(write(tmp_path, params), tmp_path, ["dataset.slices=[citi]"])
    got = {p.key: p for p in report.problems}
    assert "dataset.labels" in got and "'0'" in got["dataset.labels"].message, got
    assert not got["dataset.labels"].origin, "a problem of the file itself is not put on the --set"
    assert str(got["dataset.slices"]).startswith("--set dataset.slices=[citi]: dataset.slices: "), (
        "an override's problem names the --set option first"
    )
    assert report.message("p.yaml").startswith("p.yaml and its --set options: 2 problems"), report.message("p.yaml")


def test_typo_and_missing_keys_have_paths(table: Path, tmp_path: Path) -> None:
    params = minimal(table)
    params["split"] = {"valid_sise": 0.2}
    del params["dataset"]["task"]
    report = preflight(write(tmp_path, params), tmp_path)
    got = {p.key: p.message for p in report.problems}
    assert "split.valid_sise" in got and "unknown key" in got["split.valid_sise"], got
    assert "dataset.task" in got and "required" in got["dataset.task"], got


def test_every_column_key_is_a_real_params_key() -> None:
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    dumped = params.model_dump(by_alias=True)
    for ref in COLUMN_REFS:
        node = dumped
        for part in ref.key.split("."):
            assert isinstance(node, dict) and part in node, f"{ref.key} is not a params key"
            node = node[part]
