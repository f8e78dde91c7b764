"""Given raw files with Adult's quirks or with broken structure, ingest parses them per params or fails at
parse time with a DataError naming the file, the problem and where it is."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pandas as pd
import pytest

from retrain.config import load_params
from retrain.data.ingest import SOURCE_COLUMN, build_snapshot, ingest, normalise_labels, read_table, sample
from retrain.data.sources import parse_source
from retrain.errors import DataError

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
HEADER = ",".join([*PARAMS.dataset.features, "income"])
WIDTH = len(PARAMS.dataset.features) + 1

ROW = (
    "39,State-gov,77516,Bachelors,13,Never-married,Adm-clerical,Not-in-family,White,Male,2174,0,40,United-States,<=50K"
)
ROW_Q = "50,?,83311,Bachelors,13,Married-civ-spouse,?,Husband,White,Male,0,0,13,?,>50K."


def adult_csv(tmp_path: Path, rows: list[str], name: str = "a.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def read(path: Path, **ingest_updates: object) -> pd.DataFrame:
    return read_table(path, PARAMS.ingest.model_copy(update=ingest_updates), PARAMS.dataset)


def test_question_mark_is_missing_and_label_suffix_stripped(tmp_path: Path) -> None:
    frame = read(adult_csv(tmp_path, [ROW, ROW_Q]))
    frame = normalise_labels(frame, "income", ".")
    assert pd.isna(frame.loc[1, "workclass"]), "'?' is the declared NA marker"
    assert list(frame["income"]) == ["<=50K", ">50K"]
    assert frame["age"].dtype.kind == "i", "numeric columns stay numeric"
    assert frame["workclass"].dtype == "str", "text columns use pandas 3's str dtype"


def test_gzip_and_parquet_read_like_csv(tmp_path: Path) -> None:
    plain = read(adult_csv(tmp_path, [ROW, ROW_Q]))
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "a.csv").read_bytes()))
    pd.testing.assert_frame_equal(read(gz), plain)
    plain.to_parquet(tmp_path / "a.parquet", index=False)
    pd.testing.assert_frame_equal(read(tmp_path / "a.parquet"), plain)


def test_size_cap_checked_before_parsing(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW] * 50)
    with pytest.raises(DataError, match=r"a\.csv: file is [\d,]+ bytes, over ingest.max_bytes = 100"):
        read(path, max_bytes=100)


def test_oversized_sparse_file_is_rejected_without_reading_it(tmp_path: Path) -> None:
    cap = PARAMS.ingest.max_bytes
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as handle:
        handle.truncate(cap + 1)  # sparse: no bytes written, reading it would take seconds and memory
    started = time.perf_counter()
    with pytest.raises(DataError, match=rf"huge\.csv: file is {cap + 1:,} bytes, over ingest.max_bytes"):
        read(huge)
    assert time.perf_counter() - started < 0.5, "the cap must be checked from the file size, before any parsing"


def test_gzip_is_capped_on_its_uncompressed_size(tmp_path: Path) -> None:
    gz = tmp_path / "big.csv.gz"
    gz.write_bytes(gzip.compress(("\n".join([HEADER] + [ROW] * 2000) + "\n").encode()))
    assert gz.stat().st_size < 20_000, "the file itself is small"
    with pytest.raises(DataError, match=r"big\.csv\.gz: holds [\d,]+ bytes uncompressed, over ingest.max_bytes"):
        read(gz, max_bytes=50_000)


def test_empty_and_header_only_files_fail_with_file_name(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read(empty)
    with pytest.raises(DataError, match=r"header\.csv: no data rows \(header only\)"):
        read(adult_csv(tmp_path, [], "header.csv"))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: source file does not exist"):
        read(tmp_path / "nope.csv")


def test_missing_or_extra_column_names_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text(HEADER.replace(",income", "") + "\n" + ROW.rsplit(",", 1)[0] + "\n")
    with pytest.raises(DataError, match=r"short.csv: columns do not match.*missing \['income'\]"):
        read(path)
    extra = tmp_path / "extra.csv"
    extra.write_text(HEADER + ",leak\n" + ROW + ",1\n")
    with pytest.raises(DataError, match=r"extra\.csv: .*unexpected \['leak'\]"):
        read(extra)


def test_excluded_columns_are_dropped_before_the_column_check(tmp_path: Path) -> None:
    path = tmp_path / "with_id.csv"
    path.write_text("row_id," + HEADER + "\n" + "\n".join(f"{i}," + ROW for i in range(3)) + "\n")
    dataset = PARAMS.dataset.model_copy(update={"exclude": ("row_id",)})
    frame = read_table(path, PARAMS.ingest, dataset)
    assert "row_id" not in frame.columns and len(frame) == 3, list(frame.columns)


def test_duplicate_header_names_fail_instead_of_being_renamed(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW + ",40"], "dupes.csv", header=HEADER + ",age")
    with pytest.raises(DataError, match=r"dupes\.csv: duplicate column names \['age'\]"):
        read(path)


def test_short_row_fails_naming_its_line(tmp_path: Path) -> None:
    short = ROW.rsplit(",", 1)[0]  # one field missing: pandas would fill it with NaN
    path = adult_csv(tmp_path, [ROW, short, ROW], "short_row.csv")
    with pytest.raises(
        DataError, match=rf"short_row\.csv: line 3: {WIDTH - 1} fields, fewer than the header's {WIDTH}"
    ):
        read(path)


def test_long_row_fails_naming_its_line(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW, ROW, ROW + ",extra"], "long_row.csv")
    with pytest.raises(DataError, match=rf"long_row\.csv: line 4: {WIDTH + 1} fields, more than the header's {WIDTH}"):
        read(path)


def test_unterminated_quote_fails_naming_where_it_opens(tmp_path: Path) -> None:
    broken = ROW.replace("State-gov", '"State-gov')
    path = adult_csv(tmp_path, [ROW, broken, ROW, ROW], "quote.csv")
    with pytest.raises(DataError, match=r"quote\.csv: line 3: unterminated quote"):
        read(path)


def test_quoted_fields_may_hold_delimiters_and_newlines(tmp_path: Path) -> None:
    quoted = ROW.replace("State-gov", '"State, gov\nsecond line"')
    frame = read(adult_csv(tmp_path, [ROW, quoted, ROW], "quoted.csv"))
    assert frame.loc[1, "workclass"] == "State, gov\nsecond line" and len(frame) == 3


def test_wrong_delimiter_is_named(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW.replace(",", ";")], "semi.csv", header=HEADER.replace(",", ";"))
    with pytest.raises(
        DataError, match=r"semi\.csv: found 1 column 'age;.*\(the header contains ';'\); is ingest\.delim"
    ):
        read(path)
    frame = read(path, delimiter=";")
    assert list(frame.columns) == [*PARAMS.dataset.features, "income"], "ingest.delimiter=';' reads it"


def test_text_in_a_numeric_column_names_column_rule_and_values(tmp_path: Path) -> None:
    bad = ROW.replace("39,", "forty,", 1)
    path = adult_csv(tmp_path, [ROW, bad, ROW, bad], "text_age.csv")
    with pytest.raises(DataError, match=r"text_age\.csv: column 'age' \(rule: type int\): 2 values are not numbers, "):
        read(path)
    with pytest.raises(DataError, match=r"e\.g\. line 3: 'forty', line 5: 'forty'"):
        read(path)


def test_fractions_in_an_int_column_fail(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW, ROW.replace(",40,", ",40.5,")], "frac.csv")
    with pytest.raises(DataError, match=r"frac\.csv: column 'hours-per-week' \(rule: type int\).*line 3: 40\.5"):
        read(path)


def test_missing_values_in_an_int_column_are_allowed(tmp_path: Path) -> None:
    frame = read(adult_csv(tmp_path, [ROW, ROW.replace(",40,", ",?,")]))
    assert frame["hours-per-week"].isna().sum() == 1, (
        "a NA marker is missing, not a type error (nulls are bounded by GX)"
    )


def test_empty_numeric_fields_hint_at_na_values(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW, ROW.replace(",40,", ",,")], "blank.csv")
    with pytest.raises(DataError, match=r"line 3: ''; empty fields are missing values only if ingest.na_values lists"):
        read(path)
    frame = read(path, na_values=("?", ""))
    assert frame["hours-per-week"].isna().sum() == 1, "with '' in na_values an empty field is missing"


def test_not_utf8_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "\n" + ROW.replace("State-gov", "Stäte-gov") + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: line 2: not UTF-8 text"):
        read(path)


def test_reserved_snapshot_column_in_a_source_fails(tmp_path: Path) -> None:
    path = adult_csv(tmp_path, [ROW + ",x"], "reserved.csv", header=HEADER + f",{SOURCE_COLUMN}")
    with pytest.raises(DataError, match=r"reserved\.csv: column '__source__' is reserved"):
        read(path)


def test_parquet_with_text_in_a_numeric_column_names_the_row(tmp_path: Path) -> None:
    frame = read(adult_csv(tmp_path, [ROW, ROW, ROW]))
    frame["age"] = frame["age"].astype("str")
    frame.loc[2, "age"] = "n/a"
    frame.to_parquet(tmp_path / "typed.parquet", index=False)
    with pytest.raises(DataError, match=r"typed\.parquet: column 'age' \(rule: type int\).*row 3: 'n/a'"):
        read(tmp_path / "typed.parquet")


def test_classification_target_is_text_regression_target_numeric(tmp_path: Path) -> None:
    header = "x,y"
    path = adult_csv(tmp_path, ["1,0", "2,1", "3,1"], "xy.csv", header=header)
    binary = PARAMS.dataset.model_copy(
        update={"target": "y", "labels": ("0", "1"), "positive_label": "1", "columns": None, "protected": ()}
    )
    assert read_table(path, PARAMS.ingest, binary)["y"].dtype == "str", "labels are compared as text"
    regression = binary.model_copy(update={"task": "regression", "labels": None, "positive_label": None})
    assert read_table(path, PARAMS.ingest, regression)["y"].dtype.kind in "if", "a regression target is numeric"
    text_target = adult_csv(tmp_path, ["1,high", "2,low"], "text_y.csv", header=header)
    with pytest.raises(DataError, match=r"text_y\.csv: column 'y' \(rule: type float \(regression target\)\)"):
        read_table(text_target, PARAMS.ingest, regression)


def test_sample_is_seeded_and_ordered() -> None:
    frame = pd.DataFrame({"x": range(100)})
    a, b = sample(frame, 10, 1), sample(frame, 10, 1)
    assert a.equals(b), "same seed, same sample"
    assert list(a["x"]) == sorted(a["x"]), "sample keeps source order"
    assert sample(frame, None, 1) is frame


def test_snapshot_marks_sources(tmp_path: Path) -> None:
    adult_csv(tmp_path, [ROW, ROW], "main.csv")
    adult_csv(tmp_path, [ROW_Q], "test.csv")
    sources = {"main": parse_source("main.csv"), "test": parse_source("test.csv")}
    result = ingest(sources, tmp_path, PARAMS.ingest, PARAMS.dataset, seed=0)
    assert list(result.snapshot[SOURCE_COLUMN]) == ["main", "main", "test"]
    assert list(result.snapshot["income"]) == ["<=50K", "<=50K", ">50K"], "label suffix stripped on every source"
    assert [p["snapshot_rows"] for p in result.provenance] == [[0, 2], [2, 3]], result.provenance
    assert set(build_snapshot({"main": result.snapshot.head(1)})[SOURCE_COLUMN]) == {"main"}


def test_rows_without_a_label_are_dropped_only_when_asked(tmp_path: Path) -> None:
    unlabelled = ROW.rsplit(",", 1)[0] + ",?"
    adult_csv(tmp_path, [ROW, unlabelled, ROW_Q], "main.csv")
    sources = {"main": parse_source("main.csv")}
    kept = ingest(sources, tmp_path, PARAMS.ingest, PARAMS.dataset, seed=0).snapshot
    assert kept["income"].isna().sum() == 1, "by default the missing label stays, for the gate to reject"
    cfg = PARAMS.ingest.model_copy(update={"drop_missing_target": True})
    dropped = ingest(sources, tmp_path, cfg, PARAMS.dataset, seed=0)
    assert list(dropped.snapshot["income"]) == ["<=50K", ">50K"]
    assert [p["snapshot_rows"] for p in dropped.provenance] == [[0, 2]], "provenance counts the kept rows"


def test_utf8_bom_and_crlf_line_ends_read_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + "\r\n".join([HEADER, ROW, ROW_Q]) + "\r\n").encode("utf-8"))
    frame = read(path)
    assert frame.columns[0] == "age", "a spreadsheet's byte-order mark is not part of the first column name"
    assert list(frame["income"]) == ["<=50K", ">50K."], "labels as in the file (ingest strips the suffix later)"


def test_snapshot_and_labels_share_columns_without_changing_the_inputs() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [" a.", "b", None]}, index=[5, 6, 7]).astype({"y": "str"})
    labelled = normalise_labels(frame, "y", ".")
    assert labelled["y"].tolist()[:2] == ["a", "b"] and pd.isna(labelled["y"].iloc[2])
    assert frame["y"].tolist()[0] == " a.", "the input keeps its labels (copy-on-write, not a deep copy)"
    one = build_snapshot({"main": labelled})
    assert SOURCE_COLUMN not in labelled.columns and list(one.index) == [0, 1, 2]
    assert one[SOURCE_COLUMN].dtype == "str" and one[SOURCE_COLUMN].tolist() == ["main"] * 3
    two = build_snapshot({"main": labelled, "test": labelled.head(1)})
    assert two[SOURCE_COLUMN].tolist() == ["main"] * 3 + ["test"] and list(two.index) == [0, 1, 2, 3]


PLAIN_CASES = {
    "plain": "a,b,c\n1,2,3\n4,5,6\n",
    "no final newline": "a,b,c\n1,2,3\n4,5,6",
    "blank line": "a,b,c\n1,2,3\n\n4,5,6\n",
    "trailing blank line": "a,b,c\n1,2,3\n\n",
    "crlf": "a,b,c\r\n1,2,3\r\n",
    "quoted field": 'a,b,c\n1,"2,5",3\n',
    "quoted header only": '"a","b","c"\n1,2,3\n',
    "short row": "a,b,c\n1,2,3\n4,5\n",
    "long row": "a,b,c\n1,2,3\n4,5,6,7\n",
    "blank before header": "\na,b,c\n1,2,3\n",
    "spaces": "a, b, c\n1, 2, 3\n",
    "header only": "a,b,c\n",
    "bad utf-8": b"a,b,c\n1,2,3\n\xff,2,3\n",
    "multibyte": "a,b,c\n\u00e9,\u4e2d,3\n",
}


@pytest.mark.parametrize("name", list(PLAIN_CASES))
@pytest.mark.parametrize("gz", [False, True])
def test_byte_count_says_what_the_record_scan_says(
    name: str, gz: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numpy count of plain files and the Python record scan give the same layout, or the same error."""
    from retrain.data import ingest as module

    text = PLAIN_CASES[name]
    data = text if isinstance(text, bytes) else text.encode()
    path = tmp_path / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)

    def outcome() -> object:
        try:
            return module.scan_csv(path, ",", 10_000)
        except DataError as exc:
            return str(exc)

    fast = outcome()
    monkeypatch.setattr(module, "count_plain_rows", lambda *args: None)
    assert fast == outcome()


def test_byte_count_covers_plain_files_and_leaves_the_rest(tmp_path: Path) -> None:
    from retrain.data.ingest import count_plain_rows

    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n\n3,4")
    assert count_plain_rows(path, ",", 2, 10_000) == (2, False), "2 rows; a blank line: not one record per line"
    path.write_text('a,b\n1,"2"\n')
    assert count_plain_rows(path, ",", 2, 10_000) is None, "quotes: the record scan decides"
    path.write_text("a,b\n1,2\n")
    assert count_plain_rows(path, ",", 2, 5) is None, "over the character cap: the record scan says so"
    assert count_plain_rows(path, ",", 3, 10_000) is None, "another width: the record scan names the line"
