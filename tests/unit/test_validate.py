"""The data gate on real Adult rows: clean data passes, each kind of bad data fails with a precise line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import DatasetConfig, SplitConfig, ValidateConfig, load_params
from retrain.data.datadocs import (
    ASSETS_DIR,
    RESULT_PAGE,
    DocsAssetError,
    external_references,
    inline_page,
    load_bundle,
)
from retrain.data.ingest import SOURCE_COLUMN, sample
from retrain.data.leakage import feature_scores
from retrain.data.validate import (
    build_report,
    cv_check,
    describe_failure,
    expected_columns,
    failures,
    gx_checks,
    label_balance_checks,
    leakage_checks,
    validate_frame,
)

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
DATASET = PARAMS.dataset
CFG = PARAMS.validate_
FILES = {"main": "data/source/adult_train.csv.gz", "test": "data/source/adult_test.csv.gz"}


def adult_rows(rows: int = 2000, source: str = "main", skip: int = 0) -> pd.DataFrame:
    """Rows of a real Adult file (after the first `skip`), typed like a snapshot (categories as str, '?' as null)."""
    name = "adult_train.csv.gz" if source == "main" else "adult_test.csv.gz"
    text = {c: "str" for c in DATASET.categorical} | {DATASET.target: "str"}
    frame = pd.read_csv(
        REPO / "data/source" / name,
        na_values=["?"],
        keep_default_na=False,
        skipinitialspace=True,
        dtype=text,
        nrows=rows,
        skiprows=range(1, 1 + skip) if skip else None,
    )
    frame[DATASET.target] = frame[DATASET.target].str.removesuffix(".")
    frame[SOURCE_COLUMN] = source
    return frame


def gate(
    snapshot: pd.DataFrame,
    dataset: DatasetConfig = DATASET,
    cfg: ValidateConfig = CFG,
    docs: Path | None = None,
    cv_folds: int = 3,
) -> dict:
    """Every check the stage runs (drift aside), as the stage's report."""
    snapshot = snapshot.reset_index(drop=True)
    main = snapshot[snapshot[SOURCE_COLUMN] == "main"]
    result = validate_frame(snapshot.drop(columns=[SOURCE_COLUMN]), dataset, cfg, (), docs)
    checks = gx_checks(result, snapshot, dataset)
    checks += label_balance_checks(snapshot, dataset, cfg)
    has_test = bool((snapshot[SOURCE_COLUMN] == "test").any())
    checks.append(cv_check(main, dataset, PARAMS.split, cv_folds, has_test))
    scores = feature_scores(main, dataset, 0)
    checks += leakage_checks(scores, cfg.leakage_threshold, dataset.target)
    return build_report(checks, snapshot, scores, cfg.leakage_threshold, {"status": "skipped"})


def lines(report: dict) -> list[str]:
    return [describe_failure(c, FILES) for c in failures(report)]


def line_for(report: dict, rule: str, column: str | None) -> str:
    found = [describe_failure(c, FILES) for c in failures(report) if c["rule"] == rule and c["column"] == column]
    assert len(found) == 1, f"expected one failed {rule} on {column!r}, got: {lines(report)}"
    return found[0]


def test_clean_adult_passes_every_check_and_renders_data_docs(tmp_path: Path) -> None:
    snapshot = pd.concat([adult_rows(2500), adult_rows(1000, "test")])
    report = gate(snapshot, docs=tmp_path / "docs")
    assert report["success"], f"clean Adult must pass: {lines(report)}"
    rules = {c["rule"] for c in report["checks"]}
    assert {
        "ExpectTableColumnsToMatchSet",
        "ExpectCompoundColumnsToBeUnique",
        "label_balance",
        "cv_feasibility",
        "label_leakage",
    } <= rules, rules
    assert report["rows"] == {"main": 2500, "test": 1000}
    assert (tmp_path / "docs/index.html").is_file(), "the checkpoint's UpdateDataDocsAction writes the site"
    assert (tmp_path / "docs" / RESULT_PAGE).is_file(), "Data Docs hold the validation result page"
    assert not (tmp_path / "docs/validations").exists(), "the result page moved to the site root"
    assert report["leakage"]["max"] < CFG.leakage_threshold
    gx_evaluated = sum(c["engine"] == "gx" for c in report["checks"])
    assert_self_contained(tmp_path / "docs", gx_evaluated, "Succeeded")


BUNDLED = ("jQuery v3.7.1", "Bootstrap v4.3.1", "@version v1.19.1", "Datepicker for Bootstrap v1.9.0")
"""License headers of the inlined libraries (jQuery, Bootstrap, bootstrap-table, datepicker)."""


def visible_text(page: str) -> str:
    """What a page shows with its scripts and styles stripped: the data must be in the HTML itself."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def assert_self_contained(site: Path, gx_evaluated: int, status: str) -> dict[str, int]:
    """Every page loads nothing from the network, carries the bundled libraries, and the result page its data."""
    sizes = {p.relative_to(site).as_posix(): p.stat().st_size for p in site.rglob("*.html")}
    assert {"index.html", "expectations/data_gate.html", RESULT_PAGE} <= set(sizes), sizes
    assert not (site / "static").exists(), "everything is inlined: the 4 MB static/ folder is not shipped"
    for name in sizes:
        page = (site / name).read_text(encoding="utf-8")
        assert external_references(page) == [], f"{name} still loads {external_references(page)}"
        for library in () if name == "retrain_checks.html" else BUNDLED:
            assert library in page, f"{name}: {library} is not inlined"
    result = visible_text((site / RESULT_PAGE).read_text(encoding="utf-8"))
    assert f"Status: {status}" in result and f"Evaluated Expectations {gx_evaluated}" in result, result[:600]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert f"'_table_row_link_path': '{RESULT_PAGE}'" in index, "the index table's row is in the page, linked"
    assert "'expectations/data_gate.html'" in index and 'href="index.html"' in (site / RESULT_PAGE).read_text()
    assert max(sizes.values()) < 800_000 and sum(sizes.values()) < 3_000_000, f"Data Docs too large: {sizes}"
    return sizes


def test_external_references_catch_every_way_a_page_loads_from_the_network() -> None:
    page = (
        '<script src="https://cdn.example/a.js"></script><link rel="stylesheet" href="//cdn.example/b.css">'
        '<img src="http://img.example/c.png"><style>@import "https://cdn.example/d.css";'
        ".x{background:url('https://cdn.example/e.png')}.y{background:url(\"data:image/svg+xml,"
        "%3csvg xmlns='http://www.w3.org/2000/svg'%3e\")}</style>"
        '<a href="https://greatexpectations.io">a link is not a load</a><script src="data:,1"></script>'
    )
    found = external_references(page)
    assert found == [f"{s}cdn.example/{f}" for s, f in [("https://", "a.js"), ("//", "b.css")]] + [
        "http://img.example/c.png",
        "https://cdn.example/d.css",
        "https://cdn.example/e.png",
    ], found
    kept = inline_page(page, Path("."), Path("."), load_bundle())
    assert external_references(kept) == found, "a URL the manifest does not know is left (and logged), not hidden"
    jquery = '<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>'
    known = inline_page(jquery, Path(), Path(), load_bundle())
    assert known.startswith("<script>/* jquery.min.js: jquery 3.7.1") and "jQuery v3.7.1" in known, known[:200]


def test_a_changed_or_missing_vendored_asset_fails_loudly(tmp_path: Path) -> None:
    assets = tmp_path / "docs_assets"
    shutil.copytree(ASSETS_DIR, assets)
    (assets / "jquery.min.js").write_bytes((assets / "jquery.min.js").read_bytes() + b"\n")
    with pytest.raises(DocsAssetError, match=r"jquery\.min\.js has sha256 [0-9a-f]{64}, assets.json records fc9a93"):
        load_bundle(assets)
    (assets / "jquery.min.js").unlink()
    with pytest.raises(DocsAssetError, match=r"jquery\.min\.js is missing"):
        load_bundle(assets)


def test_the_assets_readme_names_each_file_with_its_recorded_sha256() -> None:
    manifest = json.loads((ASSETS_DIR / "assets.json").read_text())
    readme = (ASSETS_DIR / "README.md").read_text()
    for name, entry in manifest["assets"].items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), "")
        assert f"`{entry['sha256']}`" in row and entry["license"] in row, f"README row of {name}: {row!r}"
        if entry["package"] != "retrain":
            assert f"`{entry['package']}@{entry['version']}`" in row, row
    assert len(load_bundle().by_url) >= len(manifest["assets"]), "every vendored file passes its sha256 check"


def test_schema_failures_name_column_rule_and_values() -> None:
    snapshot = adult_rows(2000)
    snapshot.loc[::2, "workclass"] = np.nan  # null spike: 50% > 10%
    snapshot.loc[::300, "age"] = 250  # out of range
    snapshot.loc[::40, "race"] = "Martian"  # unseen category
    null_share = snapshot["workclass"].isna().mean()
    report = gate(snapshot)
    assert not report["success"]
    age = line_for(report, "ExpectColumnValuesToBeBetween", "age")
    assert age.startswith("data/source/adult_train.csv.gz: column 'age'"), age
    assert "min 16, max 100" in age and "dataset.columns.age" in age and "[250]" in age, age
    nulls = line_for(report, "ExpectColumnValuesToNotBeNull", "workclass")
    observed = f"observed {null_share:.2%} null ({snapshot['workclass'].isna().sum()} rows)"
    assert "at most 10.00% null" in nulls and observed in nulls, nulls
    race = line_for(report, "ExpectColumnValuesToBeInSet", "race")
    assert "'Martian' x50" in race and "2.50% unseen" in race, race
    assert len(failures(report)) == 3, lines(report)


def test_unseen_rate_within_max_unseen_fraction_passes_and_nulls_are_not_unseen() -> None:
    columns = dict(DATASET.schema)
    columns["race"] = columns["race"].model_copy(update={"max_unseen_fraction": 0.05, "max_null_fraction": 0.5})
    dataset = DATASET.model_copy(update={"columns": columns})
    snapshot = adult_rows(2000)
    snapshot.loc[::40, "race"] = "Martian"  # 2.5% of rows
    snapshot.loc[1::3, "race"] = np.nan  # nulls are not unseen values
    assert gate(snapshot, dataset)["success"], "2.5% unseen is within max_unseen_fraction 5%"
    snapshot.loc[::10, "race"] = "Martian"  # ~10% of non-null values
    report = gate(snapshot, dataset)
    assert "at most 5.00% unseen" in line_for(report, "ExpectColumnValuesToBeInSet", "race")


def test_duplicate_rows_beyond_the_bound_fail_and_null_rows_count() -> None:
    snapshot = adult_rows(2000)
    assert gate(snapshot)["success"], "the first 2000 Adult rows hold no more than 1% duplicates"
    copies = snapshot.iloc[:30].copy()
    copies["occupation"] = np.nan  # duplicates that contain nulls must still count
    duplicated = pd.concat([snapshot, copies, copies])
    in_groups = int(duplicated.drop(columns=[SOURCE_COLUMN]).duplicated(keep=False).sum())
    assert in_groups >= 60, "pandas (null equals null) sees every copy"
    report = gate(duplicated)
    line = line_for(report, "ExpectCompoundColumnsToBeUnique", None)
    assert f"duplicates ({in_groups} rows in groups of identical rows)" in line, f"GX must agree with pandas: {line}"
    assert "validate.max_duplicate_fraction" in line, line


def test_single_class_label_fails_naming_label_and_share() -> None:
    snapshot = adult_rows(3000)
    snapshot = snapshot[snapshot["income"] == "<=50K"]
    report = gate(pd.concat([snapshot, adult_rows(500, "test")]))
    line = line_for(report, "label_balance", "income")
    assert "label '>50K' has 0.00% (0 of" in line and "in source main" in line, line
    cv = line_for(report, "cv_feasibility", "income")
    assert "label '>50K' has 0 rows" in cv, cv


def test_rare_class_below_min_class_fraction_fails() -> None:
    snapshot = adult_rows(3000)
    rich = snapshot[snapshot["income"] == ">50K"].iloc[:40]
    rare = pd.concat([snapshot[snapshot["income"] == "<=50K"], rich])
    share = 40 / len(rare)
    line = line_for(gate(rare), "label_balance", "income")
    assert f"label '>50K' has {share:.2%} (40 of {len(rare)} rows)" in line and ">= 5.00%" in line, line


def test_dataset_too_small_for_cv_fails_naming_class_count_and_folds() -> None:
    rows = adult_rows(3000)
    tiny = pd.concat([rows[rows["income"] == "<=50K"].iloc[:36], rows[rows["income"] == ">50K"].iloc[:4]])
    cfg = CFG.model_copy(update={"min_rows": 10})
    report = gate(tiny, cfg=cfg, cv_folds=5)
    line = line_for(report, "cv_feasibility", "income")
    assert "label '>50K' has 4 rows in the main source" in line and "candidates.cv_folds = 5" in line, line
    assert "x 0.64" in line, f"no test source: train share is (1 - valid) * (1 - test) = 0.64: {line}"
    assert report["leakage"]["skipped"], "40 rows are too few to call a feature a leak"


def test_cv_bound_for_regression_and_groups() -> None:
    split = SplitConfig(valid_size=0.2, test_size=0.2, group_column="g")
    regression = DatasetConfig(name="r", task="regression", target="y", columns={"x": {"type": "float"}})
    frame = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0), "g": [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]})
    check = cv_check(frame, regression, split, 5, has_test=True)
    assert not check["success"] and "5 groups of 'g'" in check["observed_text"], check
    check = cv_check(frame, regression, SplitConfig(valid_size=0.2, test_size=0.2), 5, has_test=True)
    assert check["success"], "10 rows x 0.8 = 8 >= 5 folds"


def test_label_leak_is_flagged_naming_column_and_score() -> None:
    snapshot = adult_rows(2000)
    snapshot["income_flag"] = (snapshot["income"] == ">50K").astype(int)
    columns = {**DATASET.schema, "income_flag": {"type": "int"}}
    dataset = DatasetConfig.model_validate({**DATASET.model_dump(), "columns": columns})
    report = gate(snapshot, dataset)
    line = line_for(report, "label_leakage", "income_flag")
    assert "roc_auc 1.0000" in line and "leaks the label 'income'" in line, line
    assert len(failures(report)) == 1, f"only the copy leaks: {lines(report)}"


def test_text_in_a_numeric_column_names_the_values() -> None:
    snapshot = adult_rows(2000)
    snapshot["age"] = snapshot["age"].astype("str")
    snapshot.loc[::500, "age"] = "abc"
    report = gate(snapshot)
    line = line_for(report, "ExpectColumnValuesToBeInTypeList", "age")
    assert "observed dtype str" in line and "['abc']" in line and "0.20% of values are not numbers" in line, line
    assert not any(c["column"] == "age" and c["rule"].endswith("Between") for c in failures(report)), (
        "the range check that cannot run on text is implied by the type failure, not a second line"
    )


def test_missing_and_extra_columns_fail_the_column_set() -> None:
    snapshot = adult_rows(1500).drop(columns=["fnlwgt"]).assign(zzz=1)
    report = gate(snapshot)
    line = line_for(report, "ExpectTableColumnsToMatchSet", None)
    assert "missing ['fnlwgt'], unexpected ['zzz']" in line, line
    assert len(failures(report)) == 1, f"checks that cannot run on the missing column add no lines: {lines(report)}"


def test_split_columns_belong_to_the_column_set() -> None:
    assert expected_columns(DATASET, ("user_id", "age"))[-2:] == ["income", "user_id"], "features are not repeated"


def test_regression_target_must_be_finite() -> None:
    dataset = DatasetConfig(name="r", task="regression", target="y", columns={"x": {"type": "float"}})
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "y": rng.normal(size=200), SOURCE_COLUMN: "main"})
    cfg = CFG.model_copy(update={"min_rows": 10})
    assert gate(frame, dataset, cfg)["success"], lines(gate(frame, dataset, cfg))
    frame.loc[[3, 7], "y"] = np.inf
    line = line_for(gate(frame, dataset, cfg), "ExpectColumnValuesToBeBetween", "y")
    assert "finite target" in line and "inf" in line, line


@pytest.mark.parametrize("rows", [2500, pytest.param(None, marks=pytest.mark.slow)])
def test_full_and_sampled_adult_pass(rows: int | None) -> None:
    """The e2e tests' seeded 2500-row samples and the full files (48,842 rows) both pass the gate."""
    parts = [sample(adult_rows(10**6, source), rows, PARAMS.seed) for source in ("main", "test")]
    snapshot = pd.concat(parts)
    assert len(snapshot) == (5000 if rows else 48842)
    report = gate(snapshot)
    assert report["success"], lines(report)
