"""`retrain init` end to end on small real tables: the command writes a params file that loads, says what it
inferred, and that ingest reads the table with (the declared schema matches what ingest parses)."""

from __future__ import annotations

import argparse
import gzip
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from flows.init import add_parser, cmd_init, data_stem, params_source
from retrain.config import Params, load_params, model_name_for
from retrain.data.ingest import ingest
from retrain.data.sources import parse_source
from retrain.errors import ConfigError
from tests.conftest import REPO
from tests.unit.test_profile import binary_table, write


def parse(argv: list[str]) -> argparse.Namespace:
    """The `init` arguments through the subcommand's own parser (as flows/cli.py will wire it)."""
    parser = argparse.ArgumentParser(prog="retrain")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["init", *argv])


def run_init(out: Path, *argv: str) -> tuple[Params, str]:
    """Run `retrain init ... --output out`; the loaded params and the file's text."""
    assert cmd_init(parse([*argv, "--output", str(out)])) == 0
    return load_params(out), out.read_text()


def ingest_with(params: Params, root: Path) -> pd.DataFrame:
    """The table read by ingest under the generated params: the declared schema must fit what ingest parses."""
    sources = {"main": parse_source(params.ingest.source, params.ingest.query)}
    snapshot = ingest(sources, root, params.ingest, params.dataset, params.seed, keep=params.split.extra_columns)
    return snapshot.snapshot


def test_binary_table_with_an_id_and_a_zero_one_target(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(binary_table(), tmp_path / "customers.csv.gz")
    with caplog.at_level(logging.INFO, logger="flows.init"):
        params, text = run_init(tmp_path / "p.yaml", str(path), "--target", "churned", "--protected", "region")
    dataset = params.dataset
    assert dataset.name == "customers" and dataset.task == "binary", (dataset.name, dataset.task)
    assert dataset.labels == ("0", "1") and dataset.positive_label == "1", (dataset.labels, dataset.positive_label)
    assert '"0", "1"' in text, "integer-coded labels are quoted strings in the file"
    assert dataset.exclude == ("customer_id", "channel"), dataset.exclude
    assert set(dataset.schema) == {"age", "income", "plan", "region"}, list(dataset.schema)
    assert dataset.schema["region"].domain == ("east", "north", "south", "west") or set(
        dataset.schema["region"].domain or ()
    ) == {"east", "north", "south", "west"}, dataset.schema["region"]
    assert dataset.protected == ("region",) and dataset.slices[0] == "region", dataset.slices
    assert params.ingest.na_values == ("?",), params.ingest.na_values
    assert params.evaluate.metric == "roc_auc" and params.candidates.families == ("lightgbm", "hgb", "logreg")
    assert params.baselines.strategies[-1] == "heuristic" and params.baselines.heuristic is not None
    assert params.baselines.heuristic.column in dataset.schema, params.baselines.heuristic
    gates = params.evaluate.gates
    assert gates.metric_bounds.min == {} and gates.perturbation.max_drop is None, "no absolute Adult numbers"
    assert gates.baseline.margin == 0.01 and gates.champion.tolerance == 0.005, (gates.baseline, gates.champion)
    assert gates.fairness.max_demographic_parity_difference == 0.25 and gates.fairness.min_rows == 30
    assert gates.calibration.max_ece == pytest.approx(0.13), "max(0.05, 2/sqrt(240 expected test rows))"
    assert gates.latency.max_p95_ms >= 50, "max(100 x the reference p50 measured here, 50 ms)"
    assert params.validate_.min_rows == 600 and params.validate_.min_class_fraction > 0.05, params.validate_
    assert params.tracking.experiment == "retrain-customers" and params.promote.model_name == "customers"
    assert "wrote" in caplog.text and "excluded: customer_id (identifier-like), channel (constant)" in caplog.text
    snapshot = ingest_with(params, tmp_path)
    assert len(snapshot) == 1200 and "customer_id" not in snapshot.columns, snapshot.columns


def test_wine_multiclass(tmp_path: Path) -> None:
    wine = load_wine(as_frame=True)
    path = write(wine.frame.assign(target=wine.target_names[wine.target]), tmp_path / "wine.csv")
    params, text = run_init(tmp_path / "p.yaml", str(path), "--target", "target")
    assert params.dataset.task == "multiclass" and params.evaluate.metric == "roc_auc_ovr", params.dataset.task
    assert "inferred: 3 distinct text values" in text
    assert params.dataset.labels == ("class_0", "class_1", "class_2") and params.dataset.positive_label is None
    assert len(params.dataset.schema) == 13 and not params.dataset.exclude, params.dataset.exclude
    assert params.validate_.min_rows == 89, "half of 178 rows"
    assert params.evaluate.gates.calibration.max_ece == pytest.approx(0.34), "2/sqrt(36 test rows), rounded up"
    assert "\n    fairness:" not in text, "fairness is for binary tasks"
    assert len(ingest_with(params, tmp_path)) == 178


def test_regression_on_california_rows(tmp_path: Path) -> None:
    with gzip.open(REPO / "data/source/california_housing.csv.gz", "rt") as handle:
        frame = pd.read_csv(handle, nrows=3000)
    path = write(frame, tmp_path / "california.csv")
    params, text = run_init(tmp_path / "p.yaml", str(path), "--target", "median_house_value", "--name", "cal")
    std = frame["median_house_value"].std(ddof=0)
    assert params.dataset.task == "regression" and params.evaluate.metric == "r2", params.dataset.task
    assert params.dataset.labels is None and params.ingest.na_values == ("",), params.ingest.na_values
    assert (
        params.baselines.strategies[:2] == ("mean", "median") and params.baselines.heuristic.column == "median_income"
    )
    assert params.evaluate.gates.baseline.margin == 0.02 and params.promote.model_name == "cal"
    assert f"target std {std:,.6g}" in text, "the spread the relative numbers come from is in the file"
    assert params.candidates.families == ("lightgbm", "hgb", "ridge") and "\n    calibration:" not in text
    income = params.dataset.schema["median_income"]
    assert income.min == 0 and income.max >= frame["median_income"].max(), income
    assert params.dataset.slices == ("ocean_proximity",), params.dataset.slices
    assert len(ingest_with(params, tmp_path)) == 3000


def test_rmse_thresholds_are_relative_to_the_target_std() -> None:
    from retrain.data.paramsfile import gate_numbers

    assert gate_numbers("rmse", 115_000.0)["margin"] == 2300.0, "2% of the std"


def timed_table(rows: int = 900) -> pd.DataFrame:
    """Daily orders with an ISO timestamp (the split column) and a second date column written as text."""
    frame = binary_table(rows, seed=3).drop(columns=["customer_id", "channel"])
    frame["ordered_at"] = pd.date_range("2023-01-01 08:00", periods=rows, freq="6h").strftime("%Y-%m-%d %H:%M:%S")
    frame["signup_date"] = pd.date_range("2020-01-01", periods=rows, freq="D").strftime("%Y-%m-%d")
    return frame


def test_timestamp_column_becomes_the_split_time_column(tmp_path: Path) -> None:
    path = write(timed_table(), tmp_path / "orders.csv")
    params, text = run_init(tmp_path / "p.yaml", str(path), "--target", "churned", "--time-column", "ordered_at")
    assert params.split.time_column == "ordered_at" and params.split.group_column is None, params.split
    assert "ordered_at" not in params.dataset.schema and "ordered_at" not in params.dataset.exclude
    assert params.dataset.exclude == ("signup_date",), "dates as text are no feature"
    assert "dates written as text" in text and "from 2023-01-01 08:00:00 to" in text
    snapshot = ingest_with(params, tmp_path)
    assert "ordered_at" in snapshot.columns and len(snapshot) == 900


def test_csv_glob_of_batches(tmp_path: Path) -> None:
    (tmp_path / "batches").mkdir()
    frame = binary_table(1000)
    write(frame.iloc[:500], tmp_path / "batches" / "2024-01.csv")
    second = frame.iloc[500:].astype({"income": "object"})
    second.loc[second.index[:7], "income"] = ""  # empty numbers only in the later batch
    write(second, tmp_path / "batches" / "2024-02.csv")
    params, text = run_init(tmp_path / "p.yaml", str(tmp_path / "batches" / "*.csv"), "--target", "churned")
    assert params.ingest.source.endswith("batches/*.csv") and params.dataset.name == "batches"
    assert params.ingest.na_values == ("", "?"), params.ingest.na_values
    assert params.dataset.schema["income"].type == "float", "empty fields in one batch keep the column numeric"
    assert "1,000 rows read" in text
    assert len(ingest_with(params, tmp_path)) == 1000


def test_sqlite_url_with_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        binary_table(700).to_sql("customers", conn, index=False)
    monkeypatch.chdir(tmp_path)
    query = "SELECT * FROM customers WHERE age >= 20"
    params, _ = run_init(tmp_path / "p.yaml", "sqlite:///shop.db", "--query", query, "--target", "churned")
    assert params.ingest.source == f"sqlite:///{tmp_path / 'shop.db'}", "outside the project: an absolute path"
    assert params.ingest.query == query and params.dataset.name == "shop", params.dataset.name
    assert params.dataset.labels == ("0", "1") and params.dataset.exclude == ("customer_id", "channel")
    assert len(ingest_with(params, tmp_path)) > 600


def test_numeric_protected_attribute_is_banded(tmp_path: Path) -> None:
    path = write(binary_table(), tmp_path / "c.csv")
    params, _ = run_init(tmp_path / "p.yaml", str(path), "--target", "churned", "--protected", "age", "plan")
    gates = params.evaluate.gates
    edges = gates.slices.bands["age"]
    assert len(edges) == 3 and list(edges) == sorted(edges) and 30 <= edges[1] <= 60, edges
    assert all(float(e).is_integer() for e in edges), f"rounded edges: {edges}"
    assert "age" not in params.dataset.slices and params.dataset.slices[0] == "plan", params.dataset.slices
    assert gates.invariance.attributes == ("plan",) and gates.fairness.attributes == ("plan",), "age is banded only"


def test_leaking_column_is_flagged_in_a_comment_not_dropped(tmp_path: Path) -> None:
    frame = binary_table()
    frame["closed_account"] = np.where(frame["churned"] == 1, "Y", "N")
    frame.loc[::50, "closed_account"] = "N"
    params, text = run_init(tmp_path / "p.yaml", str(write(frame, tmp_path / "c.csv")), "--target", "churned")
    assert "closed_account" in params.dataset.schema and "closed_account" not in params.dataset.exclude
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("closed_account:"))
    above = "\n".join(lines[at - 2 : at])
    assert "LEAK? 'closed_account' alone scores roc_auc" in above and "add it to dataset.exclude" in above, above
    assert params.baselines.heuristic.column != "closed_account", "the heuristic baseline avoids a suspect"
    assert "closed_account" not in params.dataset.slices, "a suspect is no slice"


def test_default_output_refuses_to_overwrite_without_force_and_nothing_is_written_on_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(binary_table(300), tmp_path / "adult_like.csv")
    monkeypatch.chdir(tmp_path)
    assert cmd_init(parse(["adult_like.csv", "--target", "churned"])) == 0
    out = tmp_path / "params.adult_like.yaml"
    params = load_params(out)
    assert params.dataset.name == "adult_like" and params.promote.model_name == model_name_for("adult_like")
    assert params.ingest.source == str(tmp_path / "adult_like.csv"), "outside the project root: absolute"
    before = out.read_text()
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        cmd_init(parse(["adult_like.csv", "--target", "churned"]))
    assert out.read_text() == before
    assert cmd_init(parse(["adult_like.csv", "--target", "churned", "--force", "--name", "x"])) == 0
    assert load_params(out).dataset.name == "x", "--force overwrote it"
    with pytest.raises(ConfigError, match=r"no column 'churn'; the columns are \['customer_id', 'age', 'income'"):
        cmd_init(parse(["adult_like.csv", "--target", "churn", "--output", "q.yaml"]))
    assert not (tmp_path / "q.yaml").exists() and not list(tmp_path.glob(".q.yaml*")), "nothing written on an error"


def test_names_and_sources() -> None:
    assert data_stem("data/source/adult_train.csv.gz") == "adult_train"
    assert data_stem("x/y/events.parquet") == "events" and data_stem("data/batches/*.csv") == "batches"
    assert data_stem("sqlite:///data/shop.db") == "shop"
    root = REPO
    assert params_source("data/source/adult_train.csv.gz", root, root) == "data/source/adult_train.csv.gz"
    assert params_source("sqlite:///data/x.db", root / "data", root) == "sqlite:///data/data/x.db"
    assert params_source("postgresql+psycopg2://etl@db/w", root, root) == "postgresql+psycopg2://etl@db/w"
