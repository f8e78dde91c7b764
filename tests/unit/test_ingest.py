"""Given raw files with Adult's quirks, ingest parses them per params and refuses bad files early."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrain.config import load_params
from retrain.errors import DataError
from retrain.ingest import SOURCE_COLUMN, build_snapshot, ingest, normalise_labels, read_table, sample

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
HEADER = ",".join([*PARAMS.dataset.features, "income"])


def adult_csv(tmp_path: Path, rows: list[str], name: str = "a.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


ROW = (
    "39,State-gov,77516,Bachelors,13,Never-married,Adm-clerical,Not-in-family,White,Male,2174,0,40,United-States,<=50K"
)
ROW_Q = "50,?,83311,Bachelors,13,Married-civ-spouse,?,Husband,White,Male,0,0,13,?,>50K."


def test_question_mark_is_missing_and_label_suffix_stripped(tmp_path: Path) -> None:
    frame = read_table(adult_csv(tmp_path, [ROW, ROW_Q]), PARAMS.ingest, PARAMS.dataset)
    frame = normalise_labels(frame, "income", ".")
    assert frame.loc[1, "workclass"] is pd.NA or pd.isna(frame.loc[1, "workclass"])
    assert list(frame["income"]) == ["<=50K", ">50K"]
    assert frame["age"].dtype.kind == "i", "numeric columns stay numeric"
    assert frame["workclass"].dtype == "str", "text columns use pandas 3's str dtype"


def test_size_cap_checked_before_parsing(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW] * 50)
    small = PARAMS.ingest.model_copy(update={"max_bytes": 100})
    with pytest.raises(DataError, match=r"over ingest.max_bytes"):
        read_table(path, small, PARAMS.dataset)


def test_empty_and_header_only_files_fail_with_file_name(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read_table(empty, PARAMS.ingest, PARAMS.dataset)
    with pytest.raises(DataError, match="no data rows"):
        read_table(adult_csv(tmp_path, [], "header.csv"), PARAMS.ingest, PARAMS.dataset)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv", PARAMS.ingest, PARAMS.dataset)


def test_sample_is_seeded_and_ordered() -> None:
    frame = pd.DataFrame({"x": range(100)})
    a, b = sample(frame, 10, 1), sample(frame, 10, 1)
    assert a.equals(b), "same seed, same sample"
    assert list(a["x"]) == sorted(a["x"]), "sample keeps source order"
    assert sample(frame, None, 1) is frame


def test_snapshot_marks_sources(tmp_path: Path) -> None:
    main = adult_csv(tmp_path, [ROW, ROW], "main.csv")
    test = adult_csv(tmp_path, [ROW_Q], "test.csv")
    snap = ingest({"main": main, "test": test}, PARAMS.ingest, PARAMS.dataset, seed=0)
    assert list(snap[SOURCE_COLUMN]) == ["main", "main", "test"]
    assert set(build_snapshot({"main": snap.head(1)})[SOURCE_COLUMN]) == {"main"}


def test_missing_or_extra_column_names_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text(HEADER.replace(",income", "") + "\n" + ROW.rsplit(",", 1)[0] + "\n")
    with pytest.raises(DataError, match=r"short.csv: columns do not match.*missing \['income'\]"):
        read_table(path, PARAMS.ingest, PARAMS.dataset)
    extra = tmp_path / "extra.csv"
    extra.write_text(HEADER + ",leak\n" + ROW + ",1\n")
    with pytest.raises(DataError, match=r"unexpected \['leak'\]"):
        read_table(extra, PARAMS.ingest, PARAMS.dataset)
