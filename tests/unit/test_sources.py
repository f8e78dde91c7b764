"""Given each source kind (file, glob of batch files, SQL query) ingest builds the same kind of snapshot;
batches and databases key the cache by content; a schema left open is inferred; a failed ingest leaves
no snapshot behind."""

from __future__ import annotations

import gzip
import re
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from engine.context import StageContext, Tracking, ensure_experiment
from engine.stage import find_stage
from flows.dag import DAG
from retrain.catalog import SCHEMA, SNAPSHOT
from retrain.config import Params, load_params
from retrain.data import schema
from retrain.data.ingest import SOURCE_COLUMN, Contract, ingest, read_sql, read_table
from retrain.data.sources import display, parse_source
from retrain.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
ADULT = REPO / "data/source/adult_train.csv.gz"
TRACKING = Tracking("sqlite:///unused.db", "0", None)
INGEST_CODE = ("tasks/ingest.py", "retrain/data/ingest.py", "retrain/data/sources.py", "retrain/data/schema.py")


def adult_lines(n: int, skip: int = 0) -> tuple[str, list[str]]:
    """The real Adult header and n of its rows, as text lines."""
    with gzip.open(ADULT, "rt") as handle:
        lines = handle.read().splitlines()
    return lines[0], lines[1 + skip : 1 + skip + n]


def write_batch(path: Path, n: int, skip: int) -> Path:
    header, rows = adult_lines(n, skip)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def params(*overrides: str) -> Params:
    return load_params(REPO / "params.yaml", ["ingest.test_source=null", *overrides])


def project(root: Path) -> Path:
    """A project root holding just what the ingest stage's cache key reads (its code files)."""
    for rel in INGEST_CODE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


def snapshot_of(root: Path, p: Params) -> pd.DataFrame:
    sources = {"main": parse_source(p.ingest.source, p.ingest.query)}
    return ingest(sources, root, p.ingest, p.dataset, p.seed).snapshot


# --- glob of batch files --------------------------------------------------------------------------


def test_glob_stacks_every_batch_in_sorted_order(tmp_path: Path) -> None:
    write_batch(tmp_path / "batches/2024-02.csv", 30, skip=100)
    write_batch(tmp_path / "batches/2024-01.csv", 20, skip=0)
    p = params("ingest.source=batches/*.csv")
    result = ingest({"main": parse_source(p.ingest.source)}, tmp_path, p.ingest, p.dataset, p.seed)
    whole = read_table(write_batch(tmp_path / "whole.csv", 20, 0), p.ingest, p.dataset)
    assert len(result.snapshot) == 50, "both batches are in the snapshot"
    pd.testing.assert_frame_equal(
        result.snapshot.head(20).drop(columns=SOURCE_COLUMN), normalise(whole), check_dtype=False
    )
    assert [(r["source"], r["rows"], r["snapshot_rows"]) for r in result.provenance] == [
        ("batches/2024-01.csv", 20, [0, 20]),
        ("batches/2024-02.csv", 30, [20, 50]),
    ], "provenance says which batch file each snapshot row range came from"


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """What ingest does to labels after reading (strip the UCI '.' suffix)."""
    out = frame.copy()
    out["income"] = out["income"].str.removesuffix(".")
    return out


def test_a_new_batch_changes_the_ingest_cache_key(tmp_path: Path) -> None:
    root = project(tmp_path / "proj")
    write_batch(root / "batches/a.csv", 20, 0)
    write_batch(root / "batches/b.csv", 20, 20)
    ctx = StageContext(find_stage(DAG, "ingest"), params("ingest.source=batches/*.csv"), root, TRACKING)
    before = ctx.cache_key()
    assert before is not None and ctx.cache_key() == before, "a glob of files is cacheable and stable"
    write_batch(root / "batches/c.csv", 20, 40)
    assert ctx.cache_key() != before, "a batch dropped into the folder is a new data version"
    material = ctx.key_material()
    assert material is not None and set(material["deps"]) == {f"batches/{n}.csv" for n in "abc"}, material


def test_batch_with_another_column_set_names_the_file(tmp_path: Path) -> None:
    write_batch(tmp_path / "batches/a.csv", 10, 0)
    bad = write_batch(tmp_path / "batches/b.csv", 10, 10)
    frame = pd.read_csv(bad, dtype=str, keep_default_na=False).drop(columns=["fnlwgt"])
    frame.to_csv(bad, index=False)
    p = params("ingest.source=batches/*.csv")
    with pytest.raises(DataError, match=r"batches/b\.csv: columns do not match.*missing \['fnlwgt'\]"):
        snapshot_of(tmp_path, p)
    inferred = params(
        "ingest.source=batches/*.csv", "dataset.columns=null", "dataset.protected=[]", "dataset.slices=[]"
    )
    with pytest.raises(DataError, match=r"batches/b\.csv: columns differ from .*batches/a\.csv.*missing \['fnlwgt'\]"):
        snapshot_of(tmp_path, inferred)


def test_open_schema_batch_with_text_where_the_first_had_numbers_fails(tmp_path: Path) -> None:
    write_batch(tmp_path / "batches/a.csv", 10, 0)
    bad = write_batch(tmp_path / "batches/b.csv", 10, 10)
    lines = bad.read_text().splitlines()
    lines[4] = "n/a" + lines[4][lines[4].index(",") :]
    bad.write_text("\n".join(lines) + "\n")
    p = params("ingest.source=batches/*.csv", "dataset.columns=null", "dataset.protected=[]", "dataset.slices=[]")
    expected = r"batches/b\.csv: column 'age' \(rule: type number, as in .*batches/a\.csv\).*line 5: 'n/a'"
    with pytest.raises(DataError, match=expected):
        snapshot_of(tmp_path, p)


def test_glob_size_cap_is_for_all_batches_together(tmp_path: Path) -> None:
    a = write_batch(tmp_path / "batches/a.csv", 50, 0)
    write_batch(tmp_path / "batches/b.csv", 50, 50)
    cap = a.stat().st_size + 100
    p = params("ingest.source=batches/*.csv", f"ingest.max_bytes={cap}")
    with pytest.raises(DataError, match=rf"batches/\*\.csv: 2 batch files hold [\d,]+ bytes together, over .*{cap:,}"):
        snapshot_of(tmp_path, p)


def test_glob_matching_nothing_fails(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"batches/\*\.csv: the glob matches no files"):
        snapshot_of(tmp_path, params("ingest.source=batches/*.csv"))


# --- SQL ------------------------------------------------------------------------------------------


def adult_db(path: Path, n: int) -> Path:
    """A real SQLite database holding n Adult rows as text and integers, '?' markers included."""
    header, rows = adult_lines(n)
    frame = pd.read_csv(pd.io.common.StringIO("\n".join([header, *rows])), skipinitialspace=True, keep_default_na=False)
    with sqlite3.connect(path) as conn:
        frame.to_sql("adult", conn, index=False)
    return path


def test_sqlite_query_gives_the_same_snapshot_as_the_csv(tmp_path: Path) -> None:
    adult_db(tmp_path / "adult.db", 200)
    write_batch(tmp_path / "adult.csv", 200, 0)
    from_db = snapshot_of(tmp_path, params("ingest.source=sqlite:///adult.db", "ingest.query=SELECT * FROM adult"))
    from_csv = snapshot_of(tmp_path, params("ingest.source=adult.csv"))
    pd.testing.assert_frame_equal(from_db, from_csv)
    assert from_db["workclass"].isna().sum() > 0, "the NA marker '?' in the database becomes missing too"


def test_sql_is_read_in_chunks_and_aborted_at_the_cap(tmp_path: Path) -> None:
    db = adult_db(tmp_path / "adult.db", 2000)
    p = params(f"ingest.source=sqlite:///{db}", "ingest.query=SELECT * FROM adult", "ingest.max_bytes=60000")
    contract = Contract.of(p.dataset)
    with pytest.raises(DataError, match=r"holds more than ingest.max_bytes = 60,000 bytes in memory after") as err:
        read_sql(f"sqlite:///{db}", "adult.db", p.ingest.query or "", p.ingest, p.dataset, contract, None, 100)
    rows = int(re.search(r"after ([\d,]+) rows", str(err.value)).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert rows < 2000 and rows % 100 == 0, f"stopped after {rows} rows: a chunk past the cap, not the whole result"


def test_sql_errors_name_the_database_and_query(tmp_path: Path) -> None:
    adult_db(tmp_path / "adult.db", 10)
    with pytest.raises(DataError, match=r"sqlite:///adult\.db \(query 'SELECT \* FROM nope'\): query failed: no such"):
        snapshot_of(tmp_path, params("ingest.source=sqlite:///adult.db", "ingest.query=SELECT * FROM nope"))
    with pytest.raises(DataError, match=r"the query returned no rows"):
        snapshot_of(tmp_path, params("ingest.source=sqlite:///adult.db", "ingest.query=SELECT * FROM adult WHERE 0"))
    with pytest.raises(DataError, match=r"duplicate column names \['age'\]"):
        snapshot_of(tmp_path, params("ingest.source=sqlite:///adult.db", "ingest.query=SELECT *, age FROM adult"))


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"database file .*missing\.db does not exist"):
        snapshot_of(tmp_path, params("ingest.source=sqlite:///missing.db", "ingest.query=SELECT 1"))
    assert not (tmp_path / "missing.db").exists(), "a typo in the URL must not leave an empty database behind"


def test_postgres_needs_its_driver_and_hides_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://etl:s3cret@db.example.com:5432/warehouse"
    assert display(url) == "postgresql+psycopg://etl:***@db.example.com:5432/warehouse"
    with pytest.raises(ConfigError, match=r"etl:\*\*\*@.*no database driver.*pip install psycopg") as err:
        snapshot_of(tmp_path, params(f"ingest.source={url}", "ingest.query=SELECT 1"))
    assert "s3cret" not in str(err.value)


def test_database_cache_keys_follow_the_file_or_are_off(tmp_path: Path) -> None:
    root = project(tmp_path / "proj")
    db = adult_db(root / "adult.db", 50)
    ctx = StageContext(
        find_stage(DAG, "ingest"),
        params("ingest.source=sqlite:///adult.db", "ingest.query=SELECT * FROM adult"),
        root,
        TRACKING,
    )
    key = ctx.cache_key()
    assert key is not None, "a SQLite file is hashed like any input"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM adult WHERE rowid = 1")
    assert ctx.cache_key() != key, "a changed database file is a new data version"
    memory = StageContext(
        find_stage(DAG, "ingest"), params("ingest.source=sqlite://", "ingest.query=SELECT 1 AS income"), root, TRACKING
    )
    assert memory.cache_key() is None, "a database that can only be known by querying makes ingest uncacheable"


# --- inferred schema ------------------------------------------------------------------------------


def test_open_schema_is_inferred_from_the_main_source(tmp_path: Path) -> None:
    write_batch(tmp_path / "adult.csv", 300, 0)
    p = params(
        "ingest.source=adult.csv",
        "dataset.columns=null",
        "dataset.labels=null",
        "dataset.protected=[]",
        "dataset.slices=[]",
        "dataset.exclude=[fnlwgt]",
    )
    snap = snapshot_of(tmp_path, p)
    assert "fnlwgt" not in snap.columns, "excluded columns never reach the snapshot"
    effective = schema.resolve(p.dataset, snap)
    types = {c: s.type for c, s in effective.schema.items()}
    assert types["age"] == "int" and types["workclass"] == "category" and types["hours-per-week"] == "int", types
    assert "income" not in types and SOURCE_COLUMN not in types, "target and reserved columns are not features"
    assert effective.labels == ("<=50K", ">50K"), effective.labels


# --- the stage: a failed ingest leaves nothing behind ---------------------------------------------


def test_failed_ingest_leaves_no_snapshot(tmp_path: Path) -> None:
    from tasks.ingest import run

    root = project(tmp_path / "proj")
    write_batch(root / "good.csv", 50, 0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, ensure_experiment(uri, "ingest-test", root), None)
    good = StageContext(
        find_stage(DAG, "ingest"), params("ingest.source=good.csv", "ingest.sample_rows=null"), root, tracking
    )
    result = run(good)
    assert (root / SNAPSHOT).is_file() and (root / SCHEMA).is_file(), result
    bad = root / "bad.csv"
    bad.write_text((root / "good.csv").read_text().replace(",40,", ",forty,", 1))
    with pytest.raises(DataError, match=r"bad\.csv: column 'hours-per-week' \(rule: type int\)"):
        run(StageContext(find_stage(DAG, "ingest"), params("ingest.source=bad.csv"), root, tracking))
    leftovers = sorted(str(p.relative_to(root)) for p in (root / "data/raw").iterdir())
    assert leftovers == [], f"a failed ingest must leave no snapshot, schema or temp file: {leftovers}"


def test_a_directory_is_not_a_source_and_the_message_says_what_to_write(tmp_path: Path) -> None:
    from retrain.data.sources import file_problem

    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.csv").write_text("x\n1\n")
    assert file_problem(tmp_path, "flat").endswith("such as 'flat/*.csv'"), file_problem(tmp_path, "flat")
    part = tmp_path / "lake" / "year=2024"
    part.mkdir(parents=True)
    (part / "p0.parquet").write_bytes(b"")
    (tmp_path / "lake" / "_SUCCESS").touch()
    message = file_problem(tmp_path, "lake") or ""
    assert "'lake/**/*.parquet'" in message and "Hive partition columns ['year']" in message, message
    assert file_problem(tmp_path, "flat/a.csv") is None
    assert "does not exist (relative to the project root" in (file_problem(tmp_path, "nope.csv") or "")
