"""retrain/data/profile.py and retrain/data/paramsfile.py on small real tables: what `retrain init` writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_wine

from retrain.data.paramsfile import (
    band_edges,
    check_params_text,
    gate_numbers,
    max_ece,
    null_bound,
    numeric_range,
    render_params,
    yaml_key,
    yaml_num,
)
from retrain.data.profile import ColumnProfile, infer_task, na_markers, profile_table
from retrain.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]


def binary_table(rows: int = 1200, seed: int = 0) -> pd.DataFrame:
    """Customers: a shuffled row ID, a constant column, '?' for missing text, a 0/1 target (~30% ones)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows)
    income = rng.gamma(2.0, 20_000, rows).round(2)
    plan = rng.choice(["basic", "plus", "pro"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west", "?"], rows)
    logit = -1.5 + 0.03 * (age - 45) + 0.8 * (plan == "pro") + income / 80_000
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "customer_id": rng.permutation(np.arange(1000, 1000 + rows)),
            "age": age,
            "income": income,
            "plan": np.where(rng.random(rows) < 0.05, "?", plan),
            "region": region,
            "channel": "web",
            "churned": churned,
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    """CSV as a person would export it (no index)."""
    frame.to_csv(path, index=False)
    return path


def test_binary_table_excludes_the_id_and_the_constant_and_finds_the_marker(tmp_path: Path) -> None:
    path = write(binary_table(), tmp_path / "customers.csv")
    profile = profile_table(str(path), target="churned", root=tmp_path)
    target = profile.target
    assert target.task == "binary" and target.inferred, target
    assert target.labels == ("0", "1"), f"integer-coded labels are the strings ingest reads: {target.labels}"
    assert target.positive_label == "1" and "minority" in (target.positive_reason or ""), target
    excluded = {c.name: c.exclude_reason for c in profile.excluded}
    assert set(excluded) == {"customer_id", "channel"}, excluded
    assert "identifier" in excluded["customer_id"] and "constant" in excluded["channel"], excluded
    assert profile.na_values == ("?",) and profile.na_found["?"] == ("plan", "region"), profile.na_found
    plan = profile.column("plan")
    assert plan.kind == "category" and "?" not in (plan.values or ()), f"'?' is missing, not a value: {plan}"
    assert 0.02 < plan.null_fraction < 0.08, plan.null_fraction
    assert profile.column("age").kind == "int" and profile.column("income").kind == "float"
    assert {c.name for c in profile.features} == {"age", "income", "plan", "region"}
    assert all(c.score is not None for c in profile.features), "every feature has a single-feature score"
    assert profile.frame.columns.tolist() == ["age", "income", "plan", "region", "churned"], "excluded dropped"


def test_wine_multiclass_is_inferred_from_three_classes(tmp_path: Path) -> None:
    wine = load_wine(as_frame=True)
    frame = wine.frame.assign(target=wine.target_names[wine.target])
    path = write(frame, tmp_path / "wine.csv")
    profile = profile_table(str(path), target="target", root=tmp_path)
    assert profile.target.task == "multiclass" and "3 distinct text values" in profile.target.task_reason
    assert profile.target.labels == ("class_0", "class_1", "class_2"), profile.target.labels
    assert not profile.excluded, f"no wine column is an ID: {profile.excluded}"
    assert profile.column("proline").kind == "float" and profile.leakage_metric == "balanced_accuracy"


def test_regression_california_slice(tmp_path: Path) -> None:
    with gzip.open(REPO / "data/source/california_housing.csv.gz", "rt") as handle:
        frame = pd.read_csv(handle, nrows=3000)
    path = write(frame, tmp_path / "houses.csv")
    profile = profile_table(str(path), target="median_house_value", root=tmp_path)
    target = profile.target
    assert target.task == "regression" and "distinct values" in target.task_reason, target
    assert target.std == pytest.approx(frame["median_house_value"].std(ddof=0)), "std of the target as read"
    assert profile.na_values == ("",), f"empty fields in total_bedrooms are missing: {profile.na_found}"
    assert profile.column("total_bedrooms").kind == "float", "a numeric column with empty fields stays numeric"
    assert profile.column("ocean_proximity").values is not None


def test_infer_task_rules() -> None:
    assert infer_task(pd.Series(["a", "b", "a"]), "y")[0] == "binary"
    assert infer_task(pd.Series(["1.5", "2.0", "3.25"]), "y")[0] == "regression"
    assert infer_task(pd.Series([str(i) for i in range(100)]), "y")[0] == "regression"
    assert infer_task(pd.Series(["1", "2", "3", "2"]), "y")[0] == "multiclass"
    with pytest.raises(ConfigError, match="too many to infer"):
        infer_task(pd.Series([f"t{i}" for i in range(40)]), "y")
    with pytest.raises(DataError, match="nothing to learn"):
        infer_task(pd.Series(["a", "a"]), "y")


def test_na_markers_need_punctuation_a_numeric_column_or_two_columns() -> None:
    frame = pd.DataFrame(
        {
            "a": ["x", "None", "y"],  # a word in one text column: maybe a real category
            "b": ["1", "n/a", "3"],  # the only non-number of a numeric column
            "c": ["?", "p", "q"],
            "d": ["NULL", "u", "v"],
            "e": ["NULL", "w", "z"],
        }
    )
    assert na_markers([frame]) == {"?": ("c",), "NULL": ("d", "e"), "n/a": ("b",)}


def test_bad_input_fails_naming_the_problem(tmp_path: Path) -> None:
    path = write(binary_table(200), tmp_path / "t.csv")
    with pytest.raises(ConfigError, match=r"no column 'churn'; the columns are \['customer_id', 'age'"):
        profile_table(str(path), target="churn", root=tmp_path)
    with pytest.raises(ConfigError, match=r"no column 'gender'; the columns are \['customer_id'"):
        profile_table(str(path), target="churned", protected=("gender",), root=tmp_path)
    with pytest.raises(DataError, match="source file does not exist"):
        profile_table(str(tmp_path / "nope.csv"), target="churned", root=tmp_path)
    with pytest.raises(ConfigError, match="--task binary needs a target with 2 values; 'plan' has 3"):
        profile_table(str(path), target="plan", task="binary", root=tmp_path)
    with pytest.raises(ConfigError, match=r"--positive 'yes' is not a value of 'churned'; its values are \['0', '1'\]"):
        profile_table(str(path), target="churned", positive="yes", root=tmp_path)
    with pytest.raises(ConfigError, match="--task regression needs a numeric target"):
        profile_table(str(path), target="plan", task="regression", root=tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        profile_table(str(path), target="churned", time_column="age", group_column="plan", root=tmp_path)
    with pytest.raises(ConfigError, match="pass --query"):
        profile_table("sqlite:///x.db", target="churned", root=tmp_path)


def test_time_column_must_be_complete_and_parseable(tmp_path: Path) -> None:
    frame = binary_table(300).assign(day=pd.date_range("2024-01-01", periods=300, freq="D").astype(str))
    frame.loc[5, "day"] = None
    path = write(frame, tmp_path / "t.csv")
    with pytest.raises(DataError, match="--time-column 'day': 1 rows have no value"):
        profile_table(str(path), target="churned", time_column="day", root=tmp_path)


def test_a_copy_of_the_label_scores_as_a_leak_and_stays_a_feature(tmp_path: Path) -> None:
    frame = binary_table(800)
    frame["refund_issued"] = np.where(frame["churned"] == 1, "yes", "no")
    frame.loc[::97, "refund_issued"] = "no"
    profile = profile_table(str(write(frame, tmp_path / "t.csv")), target="churned", root=tmp_path)
    leak = profile.column("refund_issued")
    assert not leak.excluded and leak.score is not None and leak.score >= 0.98, leak
    assert [c.name for c in profile.flagged(0.98)] == ["refund_issued"], profile.flagged()


def test_yaml_values_are_safe() -> None:
    for name in ["yes", "a: b", "x # y", "1", "null", "<1H OCEAN", "col with space", "ñandú", "-lead"]:
        key = yaml_key(name)
        assert yaml.safe_load(f"{key}: 1") == {name: 1}, f"{name!r} rendered as {key!r}"
    assert yaml_key("age") == "age" and yaml_key("education-num") == "education-num", "plain names stay plain"
    for value in [0.1, 1e-7, 123456789.0, -3.5, 2.0]:
        assert yaml.safe_load(yaml_num(value)) == pytest.approx(value, rel=1e-5), value


def test_derived_numbers() -> None:
    age = ColumnProfile("age", "int", 0.0, 73, minimum=17, maximum=90)
    assert numeric_range(age) == (9, 98), "10% of the span, outward to whole numbers"
    money = ColumnProfile("gain", "int", 0.0, 9, minimum=0, maximum=99_999)
    assert numeric_range(money) == (0, 110_000), "not below 0 when nothing was"
    temp = ColumnProfile("t", "float", 0.0, 9, minimum=-12.5, maximum=30.25)
    low, high = numeric_range(temp)
    assert low <= -12.5 - 4.275 and high >= 30.25 + 4.275 and low > -20 and high < 40, (low, high)
    close = ColumnProfile("x", "float", 0.0, 9, minimum=1234567.891, maximum=1234567.999)
    low, high = numeric_range(close)
    assert low <= 1234567.891 and high >= 1234567.999 and yaml.safe_load(yaml_num(low, exact=True)) == low, low
    assert null_bound(0.0) == 0.01 and null_bound(0.056) == pytest.approx(0.084), "observed + max(0.01, half)"
    assert max_ece(6512) == 0.05 and max_ece(36) == pytest.approx(0.34), "2/sqrt(test rows) on small sets"
    assert band_edges(np.arange(17, 91)) == [35, 54, 72], band_edges(np.arange(17, 91))
    assert gate_numbers("roc_auc", None)["margin"] == 0.01
    assert gate_numbers("rmse", 1000.0) == {
        "margin": 20.0,
        "tolerance": 10.0,
        "max_gap": 250.0,
        "slice_tolerance": 50.0,
    }


def test_rendered_file_loads_and_says_what_was_inferred(tmp_path: Path) -> None:
    path = write(binary_table(), tmp_path / "customers.csv")
    profile = profile_table(str(path), target="churned", root=tmp_path, protected=("age", "plan"))
    text = render_params(profile, name="customers", source=str(path), latency={"p50_ms": 0.8, "trees": 500})
    params = check_params_text(text)
    assert params.dataset.exclude == ("customer_id", "channel"), params.dataset.exclude
    assert "identifier-like" in text and "constant: every value is 'web'" in text, "each exclusion says why"
    assert "inferred: 2 distinct values" in text
    gates = params.evaluate.gates
    assert list(gates.slices.bands) == ["age"], "a numeric protected attribute is banded"
    assert gates.invariance.attributes == ("plan",) and gates.fairness.attributes == ("plan",), "discrete ones only"
    assert gates.latency.max_p95_ms == 80, "max(100 x the reference p50 of 0.8 ms, 50 ms)"


def test_parquet_with_booleans_and_a_group_column(tmp_path: Path) -> None:
    frame = binary_table(600).assign(
        is_member=lambda f: f["age"] > 40, household=lambda f: (f["customer_id"] // 3).astype(str)
    )
    path = tmp_path / "members.parquet"
    frame.to_parquet(path, index=False)
    profile = profile_table(str(path), target="churned", group_column="household", root=tmp_path)
    member = profile.column("is_member")
    assert member.kind == "category" and set(member.values or ()) == {"True", "False"}, member
    assert profile.split_column is not None and profile.split_column.role == "group", profile.split_column
    assert "groups" in profile.split_column.note and "household" not in [c.name for c in profile.columns]
    assert profile.target.labels == ("0", "1"), "an integer Parquet target reads as text labels, like ingest"
    text = render_params(profile, name="members", source=str(path))
    params = check_params_text(text)
    assert params.split.group_column == "household" and params.dataset.schema["is_member"].type == "category"
    assert params.evaluate.gates.latency.max_p95_ms == 50, "no reference measured: the generic budget"


def test_a_label_suffix_on_some_rows_is_found_and_stripped(tmp_path: Path) -> None:
    frame = binary_table(400).assign(churned=lambda f: np.where(f["churned"] == 1, ">50K", "<=50K"))
    frame.loc[200:, "churned"] = frame.loc[200:, "churned"] + "."  # a test file appended, UCI style
    profile = profile_table(str(write(frame, tmp_path / "t.csv")), target="churned", root=tmp_path)
    assert profile.label_suffix == "." and profile.target.labels == ("<=50K", ">50K"), profile.target
    assert profile.target.task == "binary", "stripped before the task is inferred"
    params = check_params_text(render_params(profile, name="t", source="t.csv"))
    assert params.ingest.label_suffix == "." and params.dataset.labels == ("<=50K", ">50K")


def test_a_tiny_table_has_no_scores_and_no_heuristic_baseline(tmp_path: Path) -> None:
    profile = profile_table(str(write(binary_table(80), tmp_path / "t.csv")), target="churned", root=tmp_path)
    assert profile.leakage_skipped and all(c.score is None for c in profile.columns), profile.leakage_skipped
    params = check_params_text(render_params(profile, name="tiny", source="t.csv"))
    assert params.baselines.strategies == ("most_frequent", "stratified", "uniform"), params.baselines
    assert params.baselines.heuristic is None and params.validate_.min_rows == 40
