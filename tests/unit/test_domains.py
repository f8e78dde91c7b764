"""Champion domains: what is derived from the champion's data, and the shares GX and pandas measure alike.

Real Adult rows and real GX (no mocks): the domains come from a "champion" snapshot of the first training
rows, the new data is a later batch with values the champion never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import DatasetConfig, DomainsConfig, load_params
from retrain.data.domains import MAX_CATEGORIES, derive, out_of_range, unseen, without_reference
from retrain.data.ingest import SOURCE_COLUMN
from retrain.data.validate import check_snapshot, describe_failure, failures, gx_checks, validate_frame, warnings
from tests.unit.test_validate import adult_rows

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
DATASET = PARAMS.dataset
MD5 = "0123456789abcdef0123456789abcdef"
FILES = {"main": "data/source/new.csv", "test": "data/source/adult_test.csv.gz"}


CHAMPION = adult_rows(2000)
"""The champion's training rows (main source of its snapshot)."""


def later_batch(rows: int = 2000) -> pd.DataFrame:
    """New main rows (the next ones in the file) plus test rows, indexed like a snapshot."""
    return pd.concat([adult_rows(rows, skip=2000), adult_rows(1000, source="test")], ignore_index=True)


def params_with(**domains: object):
    """The repo's params with validate.domains set."""
    validate = PARAMS.validate_.model_copy(update={"domains": DomainsConfig(**domains)})
    return PARAMS.model_copy(update={"validate_": validate})


def test_derivation_takes_only_what_the_schema_leaves_open() -> None:
    found = derive(CHAMPION, DATASET, "block", MD5)
    assert found.status == "computed" and found.active and found.reference_rows == 2000
    open_categories = [c for c in DATASET.categorical if DATASET.schema[c].domain is None]
    assert open_categories == [c for c in found.columns if found.columns[c].kind == "category"]
    assert {"race", "sex"}.isdisjoint(found.columns), "a declared domain keeps precedence"
    occupation = found.columns["occupation"].values
    assert list(occupation) == sorted(CHAMPION["occupation"].dropna().unique()), "every non-null value, sorted"
    numeric = {c: r for c, r in found.columns.items() if r.kind == "numeric"}
    assert list(numeric) == ["fnlwgt"], "every other numeric column declares both min and max"
    assert numeric["fnlwgt"].min is None, "fnlwgt declares min 1: only its max comes from the champion"
    assert numeric["fnlwgt"].max == int(CHAMPION["fnlwgt"].max()) and isinstance(numeric["fnlwgt"].max, int)
    open_age = DATASET.model_copy(
        update={
            "columns": {**DATASET.schema, "age": DATASET.schema["age"].model_copy(update={"min": None, "max": None})}
        }
    )
    age = derive(CHAMPION, open_age, "block", MD5).columns["age"]
    assert (age.min, age.max) == (int(CHAMPION["age"].min()), int(CHAMPION["age"].max()))


def test_columns_without_a_usable_reference_are_listed_not_checked() -> None:
    dataset = DatasetConfig(
        name="t",
        task="regression",
        target="y",
        columns={
            "ids": {"type": "category"},
            "empty": {"type": "category"},
            "gone": {"type": "float"},
            "x": {"type": "float", "max": 5.0},
        },
    )
    reference = pd.DataFrame(
        {
            "ids": [f"id{i}" for i in range(MAX_CATEGORIES + 1)],
            "empty": pd.Series([None] * (MAX_CATEGORIES + 1), dtype="str"),
            "x": np.linspace(-1.5, 2.0, MAX_CATEGORIES + 1),
            "y": 0.0,
        }
    )
    found = derive(reference, dataset, "warn", MD5)
    assert list(found.columns) == ["x"] and (found.columns["x"].min, found.columns["x"].max) == (-1.5, None)
    assert set(found.skipped_columns) == {"ids", "empty", "gone"}, found.skipped_columns
    assert "1001 categories" in found.skipped_columns["ids"]
    section = found.section(DomainsConfig())
    assert section["skipped_columns"] == found.skipped_columns and section["columns"]["x"]["max"] is None


def test_without_a_reference_nothing_is_derived() -> None:
    assert without_reference("block", "none").status == "skipped", "no champion: the declared schema only"
    assert without_reference("off", MD5).status == "off"
    assert without_reference("block", "off").status == "off", "drift and domains both off"
    lost = without_reference("warn", MD5, "not in the remote")
    assert lost.status == "unavailable" and not lost.active
    assert lost.section(DomainsConfig()) == {
        "status": "unavailable",
        "action": "warn",
        "reference_data_hash": MD5,
        "reason": "not in the remote",
    }


def test_shares_ignore_nulls_and_name_the_most_frequent_values_first() -> None:
    series = pd.Series(["a", "b", None, "zz", "q", "zz", None, "a", "zz", "q"], dtype="str")
    found = unseen(series, ("a", "b"))
    assert (found.count, found.non_null, found.share) == (5, 8, 5 / 8), "two nulls are not unseen values"
    assert found.top == [("zz", 3), ("q", 2)] and found.examples() == "['zz' x3, 'q' x2]"
    numbers = pd.Series([1, 5, 9, np.nan, 12, 12, -3])
    found = out_of_range(numbers, 0, 10)
    assert (found.count, found.non_null, found.top) == (3, 6, [(12.0, 2), (-3.0, 1)])
    assert out_of_range(numbers, None, 10).count == 2, "an open side is unbounded"


@pytest.mark.parametrize("share", [0.02, 0.021])
def test_gx_and_pandas_agree_on_the_share_and_the_bound_is_inclusive(share: float) -> None:
    """GX's `mostly` on the main rows gives the same share as pandas; exactly the bound passes."""
    batch = later_batch(2000)
    main = batch.index[batch[SOURCE_COLUMN] == "main"]
    batch.loc[main, "workclass"] = batch.loc[main, "workclass"].fillna("Private")  # 2000 non-null values
    batch.loc[main[: round(share * 2000)], "workclass"] = "Moonlighting"  # 40 (exactly 2%) or 42 of them
    champion = derive(CHAMPION, DATASET, "block", MD5)
    cfg = PARAMS.validate_
    checks = gx_checks(validate_frame(batch, DATASET, cfg, champion=champion), batch, DATASET)
    by_source = {c["sources"][0]: c for c in checks if c.get("reference") and c["column"] == "workclass"}
    assert set(by_source) == {"main", "test"}, "one expectation per source, each with its own share"
    expected = unseen(batch.loc[main, "workclass"], champion.columns["workclass"].values)
    assert by_source["main"]["unexpected_percent"] == pytest.approx(100 * expected.share)
    assert expected.share == share
    assert by_source["main"]["success"] is (expected.share <= cfg.domains.max_unseen_fraction)
    assert by_source["test"]["success"] and by_source["test"]["unexpected_percent"] == 0.0


def test_the_gate_blocks_or_warns_with_column_values_share_and_reference(tmp_path: Path) -> None:
    batch = later_batch(2000)
    main = batch.index[batch[SOURCE_COLUMN] == "main"]
    batch.loc[main[::3], "occupation"] = "Astronaut"  # a third of the new rows
    batch.loc[main[:20], "occupation"] = "Pilot"
    batch.loc[main[::10], "race"] = "Martian"  # race declares its domain: checked against it only
    share = unseen(batch.loc[main, "occupation"], CHAMPION["occupation"].dropna().unique())

    def run(action: str) -> dict:
        params = params_with(action=action)
        champion = derive(CHAMPION, DATASET, action, MD5)
        report, _ = check_snapshot(
            batch, DATASET, params, tmp_path / action, lambda rows: {"status": "off", "action": "off"}, MD5, champion
        )
        return report

    report = run("block")
    lines = [describe_failure(c, FILES) for c in failures(report)]
    (occupation,) = [line for line in lines if "'occupation'" in line]
    assert occupation.startswith("data/source/new.csv: column 'occupation': ExpectColumnValuesToBeInSet failed")
    assert "champion domain" in occupation and "validate.domains.max_unseen_fraction (action block" in occupation
    assert f"{100 * share.share:.2f}% of the non-null values of the main rows" in occupation, occupation
    assert f"e.g. {share.examples()}" in occupation and share.top[0][0] == "Astronaut", occupation
    assert f"DVC md5 {MD5}" in occupation
    (race,) = [line for line in lines if "'race'" in line]
    assert "dataset.columns.race.domain" in race and "champion" not in race, "declared domain: its own rule only"
    assert (
        report["domains"]["status"] == "computed" and report["domains"]["columns"]["occupation"]["type"] == "category"
    )
    assert "champion domain" in (tmp_path / "block/retrain_checks.html").read_text()
    suite_page = (tmp_path / "block/expectations/data_gate.html").read_text()
    assert suite_page.count("champion domain") == 2 * len(report["domains"]["columns"]), "per column and source"
    assert MD5 in suite_page, "the Data Docs note names the reference snapshot"

    report = run("warn")
    assert [c["column"] for c in failures(report)] == ["race"], "action warn: the champion domain only warns"
    assert [c["column"] for c in warnings(report)] == ["occupation"]
    report = run("off")
    assert not [c for c in report["checks"] if c.get("reference")] and report["domains"]["status"] == "off"
