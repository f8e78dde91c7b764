"""Bad input never passes silently and never loses anything.

Each case feeds one corrupted copy of real Adult rows through `retrain run --set ingest.source=...`
(the real flow: Prefect, DVC, GX, MLflow in temp dirs) and checks: exit 2, a message naming the file,
column, rule and offending value or rate, the Prefect run Failed, nothing registered, `champion`
untouched, and no validation record or snapshot left that a later run could take as valid.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adapters.dvc_store import file_md5
from flows.cli import main
from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e
MODEL = "adult-income"
ROWS = 3000


def adult_lines(root: Path) -> list[str]:
    """Header plus the first ROWS data lines of the real Adult training file."""
    with gzip.open(root / "data/source/adult_train.csv.gz", "rt") as handle:
        return [next(handle).rstrip("\n") for _ in range(ROWS + 1)]


def set_field(lines: list[str], column: str, value: str, every: int, start: int = 1) -> list[str]:
    """Replace one column's value on every `every`-th data line."""
    header = lines[0].split(",")
    at = header.index(column)
    out = [lines[0]]
    for number, line in enumerate(lines[1:], start=1):
        fields = line.split(",")
        if number >= start and (number - start) % every == 0:
            fields[at] = value
        out.append(",".join(fields))
    return out


def thirty_percent(lines: list[str], column: str, value: str) -> list[str]:
    """`value` in `column` on 3 of every 10 data lines."""
    for start in (1, 2, 3):
        lines = set_field(lines, column, value, every=10, start=start)
    return lines


def add_column(lines: list[str], name: str, values: Callable[[list[str], list[str]], str]) -> list[str]:
    """Append a column computed from each row (header, fields)."""
    header = lines[0].split(",")
    return [f"{lines[0]},{name}"] + [f"{line},{values(header, line.split(','))}" for line in lines[1:]]


def drop_column(lines: list[str], column: str) -> list[str]:
    at = lines[0].split(",").index(column)
    return [",".join(f for i, f in enumerate(line.split(",")) if i != at) for line in lines]


def labelled(lines: list[str], label: str) -> list[str]:
    """Data lines whose label (the last field) is `label`."""
    return [line for line in lines[1:] if line.rsplit(",", 1)[-1].strip() == label]


def income(header: list[str], fields: list[str]) -> str:
    return fields[header.index("income")].strip()


@dataclass
class Case:
    """One bad input: how to make it, the overrides it needs and what the error must say."""

    name: str
    make: Callable[[list[str]], list[str] | bytes]
    expect: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    suffix: str = ".csv"
    ingest_failure: bool = False
    extra: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("empty_file", lambda lines: b"", ("is empty",), ingest_failure=True),
    Case("header_only", lambda lines: lines[:1], ("no data rows",), ingest_failure=True),
    Case("missing_column", lambda lines: drop_column(lines, "age"), ("missing ['age']",), ingest_failure=True),
    Case(
        "extra_column",
        lambda lines: add_column(lines, "zzz", lambda h, f: "1"),
        ("unexpected ['zzz']",),
        ingest_failure=True,
    ),
    Case("text_in_numeric", lambda lines: set_field(lines, "age", "abc", every=500), ("'age'", "abc")),
    Case("null_spike", lambda lines: set_field(lines, "workclass", "?", every=2), ("'workclass'", "NotBeNull")),
    Case("out_of_range", lambda lines: set_field(lines, "age", "250", every=700), ("'age'", "Between", "250")),
    Case("unseen_category", lambda lines: set_field(lines, "race", "Martian", every=20), ("'race'", "Martian")),
    Case(  # the reported case: 30% of a column that declares no domain hold a value the champion never saw
        "unseen_in_champion_domain",
        lambda lines: thirty_percent(lines, "occupation", "Astronaut"),
        ("column 'occupation'", "champion domain", "'Astronaut' x", "of the non-null values of the main rows"),
    ),
    Case(  # fnlwgt declares min 1 only: its max is the champion's
        "above_champion_range",
        lambda lines: set_field(lines, "fnlwgt", "5000000", every=20),
        ("column 'fnlwgt'", "champion domain", "5000000 x", "declares no max"),
    ),
    Case("duplicate_rows", lambda lines: lines + lines[1:600], ("duplicate",)),
    Case(
        "short_row",
        lambda lines: [*lines[:100], ",".join(lines[100].split(",")[:-3]), *lines[101:]],
        ("line 101", "fields"),
        ingest_failure=True,
    ),
    Case(
        "too_many_fields",
        lambda lines: [*lines[:50], lines[50] + ",extra,more", *lines[51:]],
        ("line 51",),
        ingest_failure=True,
    ),
    Case(
        "unterminated_quote",
        lambda lines: [*lines[:30], lines[30].replace(",", ',"', 1), *lines[31:]],
        ("quote",),
        ingest_failure=True,
    ),
    Case(
        "wrong_delimiter",
        lambda lines: [line.replace(",", ";") for line in lines],
        ("delimiter",),
        ingest_failure=True,
    ),
    Case(
        "duplicate_header",
        lambda lines: [lines[0].replace("fnlwgt", "age"), *lines[1:]],
        ("duplicate", "'age'"),
        ingest_failure=True,
    ),
    Case("over_size_cap", lambda lines: lines, ("ingest.max_bytes",), ("ingest.max_bytes=1000",), ingest_failure=True),
    Case(
        "label_leak",
        lambda lines: add_column(lines, "leak_flag", lambda h, f: "1" if income(h, f) == ">50K" else "0"),
        ("'leak_flag'", "leak"),
        ("dataset.columns.leak_flag={type: int}", "ingest.test_source=null"),
    ),
    Case("single_class", lambda lines: [lines[0], *labelled(lines, "<=50K")], ("'>50K'",)),
    Case(
        "too_small_for_cv",
        lambda lines: [lines[0], *labelled(lines, "<=50K")[:36], *labelled(lines, ">50K")[:4]],
        ("cv_folds",),
        ("validate.min_rows=10", "candidates.cv_folds=5", "validate.min_class_fraction=0.05"),
    ),
]


REPORT = "models/validate/report.json"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> tuple[Path, str]:
    """A project whose clean first run (tiny settings) already put a champion in the registry."""
    params = small_params(candidates={"families": ["lightgbm"], "n_trials": 1, "cv_folds": 2})
    root = make_project(tmp_path_factory.mktemp("gate") / "proj", params)
    saved = os.getcwd(), os.environ.get("RETRAIN_ROOT")
    os.environ["RETRAIN_ROOT"] = str(root)
    os.chdir(root)
    try:
        assert main(["run"]) == 0, "the clean Adult sample must pass the gate and promote"
    finally:
        os.chdir(saved[0])
        if saved[1] is None:
            os.environ.pop("RETRAIN_ROOT")
        else:
            os.environ["RETRAIN_ROOT"] = saved[1]
    return root, file_md5(root / REPORT)


def registry_state(root: Path) -> tuple[str, int]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    return str(champion), len(client.search_model_versions(f"name = '{MODEL}'"))


def last_flow_run() -> tuple[str, str]:
    """Id and state type of the newest Prefect flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(runs[0].id), runs[0].state.type.value


PREFLIGHT = "found before anything ran"
"""What the preflight's message says: the case was refused before a flow run was created."""


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_names_the_cause_and_changes_nothing(
    case: Case, project: tuple[Path, str], use_root, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    project, clean_report = project
    use_root(project)
    before = registry_state(project)
    snapshot = project / "data/raw/snapshot.parquet"
    snapshot_before = file_md5(snapshot) if snapshot.exists() else None
    run_before, _ = last_flow_run()
    content = case.make(adult_lines(project))
    bad = tmp_path / f"{case.name}{case.suffix}"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text("\n".join(content) + "\n")
    overrides = [f"ingest.source={bad}", *case.overrides]
    with caplog.at_level(logging.ERROR):
        code = main(["run", *[arg for o in overrides for arg in ("--set", o)]])
    message = caplog.text
    assert code == 2, f"{case.name}: exit {code}, log:\n{message[-3000:]}"
    assert bad.name in message, f"{case.name}: the error must name the file:\n{message[-3000:]}"
    for fragment in case.expect:
        assert fragment in message, f"{case.name}: error does not mention {fragment!r}:\n{message[-3000:]}"
    run_after, state = last_flow_run()
    if PREFLIGHT in message:  # refused before Prefect started: no flow run, not a byte written
        assert run_after == run_before, f"{case.name}: preflight refused it, yet a flow run was created"
        now = file_md5(snapshot) if snapshot.exists() else None
        assert now == snapshot_before, f"{case.name}: preflight must not touch the snapshot"
    else:
        assert state == "FAILED", f"{case.name}: the Prefect flow run must end Failed"
        if case.ingest_failure:
            assert not snapshot.exists(), "a partial snapshot was left behind"
    assert registry_state(project) == before, f"{case.name}: the registry changed"
    report = project / REPORT
    assert not report.exists() or file_md5(report) == clean_report, "a validation record certifies bad data"
