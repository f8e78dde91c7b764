"""Bad input and a broken environment fail naming the real cause, with nothing lost or half-written.

Each case runs the real CLI (`retrain check` / `run` / `stage`) on a tiny project: a directory given as the
source, a missing source (never "has the stage before it run?"), `--set` errors (named by the option, not
blamed on params.yaml), a read-only MLflow tracking database, and a snapshot the data gate rejects (never
pushed to the DVC remote).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import make_project, small_params

pytestmark = pytest.mark.e2e

RETRAIN = str(Path(sys.executable).parent / "retrain")
STAGE_HINT = "has the stage before it run"


def tiny_project(root: Path) -> Path:
    """A project root (params.yaml + dvc.yaml) with one 300-row table and a folder of Parquet part files."""
    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame(
        {"age": rng.integers(18, 80, n), "city": rng.choice(["a", "b"], n), "y": rng.integers(0, 2, n)}
    )
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "t.csv", index=False)
    (root / "parts").mkdir()
    for i, start in enumerate((0, n // 2)):
        frame.iloc[start : start + n // 2].to_parquet(root / "parts" / f"part-{i}.parquet", index=False)
    (root / "parts" / "_SUCCESS").touch()
    params = {
        "dataset": {"name": "toy", "task": "binary", "target": "y", "positive_label": "1"},
        "ingest": {"source": "t.csv"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


def listing(root: Path) -> dict[str, str]:
    """Every file under the root with its md5: what "nothing was written" is checked against."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class Done:
    """A finished CLI command: exit code and stderr (where the CLI logs)."""

    returncode: int
    stderr: str


@contextlib.contextmanager
def rooted(root: Path) -> Iterator[None]:
    """RETRAIN_ROOT and the cwd at `root` for an in-process CLI call; the environment restored after it."""
    saved, cwd = dict(os.environ), Path.cwd()
    os.environ["RETRAIN_ROOT"] = str(root)
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def cli(root: Path, caplog: pytest.LogCaptureFixture, *args: str) -> Done:
    """`retrain ARGS` through the console script's entry point (flows.cli.main), in this process; its log lines."""
    from flows.cli import main

    caplog.clear()
    with rooted(root), caplog.at_level(logging.INFO):
        code = main(list(args))
    return Done(code, caplog.text)


@contextlib.contextmanager
def mode(path: Path, bits: int) -> Iterator[None]:
    """`path` with permission bits `bits` inside the block, its own mode restored after."""
    saved = path.stat().st_mode & 0o7777
    path.chmod(bits)
    try:
        yield
    finally:
        path.chmod(saved)


def unprivileged_cli(root: Path, *args: str) -> Done:
    """`retrain ARGS` as a subprocess in which file permissions hold even for root (CAP_DAC_OVERRIDE dropped)."""
    cmd = [RETRAIN, *args]
    if os.geteuid() == 0:
        capsh = shutil.which("capsh")
        assert capsh, "running as root: capsh (libcap2-bin) is needed to drop CAP_DAC_OVERRIDE for this case"
        cmd = [capsh, "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c", shlex.join(cmd)]
    env = {**os.environ, "RETRAIN_ROOT": str(root)}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    return Done(done.returncode, done.stderr)


def test_a_directory_source_says_directory_and_what_to_write(tmp_path: Path, caplog) -> None:
    root = tiny_project(tmp_path / "p")
    before = listing(root)
    for args in (("check", "--set", "ingest.source=parts"), ("run", "--set", "ingest.test_source=parts/")):
        done = cli(root, caplog, *args)
        assert done.returncode == 2, done.stderr
        key = args[2].split("=")[0]
        assert f"{key}: 'parts" in done.stderr and "is a directory" in done.stderr, done.stderr
        assert "does not exist" not in done.stderr, f"a directory is not missing: {done.stderr}"
        assert "'parts/*.parquet'" in done.stderr, f"the glob to write instead, from what it holds: {done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
    assert listing(root) == before, "nothing may be written"

    # the ingest path (a run that skips the preflight) says the same, naming the key
    from retrain.config import load_params
    from retrain.data.ingest import ingest
    from retrain.data.sources import parse_source
    from retrain.errors import DataError

    params = load_params(root / "params.yaml", ["ingest.source=parts"])
    with pytest.raises(DataError, match=r"^ingest\.source: 'parts' is a directory .*'parts/\*\.parquet'"):
        ingest({"main": parse_source("parts")}, root, params.ingest, params.dataset, 0)


def test_a_missing_source_names_its_key_and_path_never_a_stage(tmp_path: Path, caplog) -> None:
    root = tiny_project(tmp_path / "p")
    before = listing(root)
    done = cli(root, caplog, "run", "--set", "ingest.test_source=holdout/test.csv")
    assert done.returncode == 2, done.stderr
    line = next(x for x in done.stderr.splitlines() if "holdout/test.csv" in x and "ingest.test_source" in x)
    assert "does not exist" in line and f"relative to the project root {root}" in line, line
    assert f"nor does its folder {root / 'holdout'}" in line, line
    assert STAGE_HINT not in done.stderr and "has that stage run" not in done.stderr, done.stderr
    assert listing(root) == before, "nothing may be written"

    # inside a run (the file went missing after the preflight): the stage names the params key, not a stage
    from engine.context import StageContext, Tracking
    from engine.stage import find_stage
    from flows.dag import DAG
    from retrain.config import load_params
    from retrain.errors import DataError

    tracking = Tracking("sqlite:///unused.db", "0", None)
    params = load_params(root / "params.yaml", ["ingest.source=gone.csv"])
    ingest_ctx = StageContext(find_stage(DAG, "ingest"), params, root, tracking)
    with pytest.raises(DataError) as caught:
        ingest_ctx.key_material()
    message = str(caught.value)
    assert message.startswith("stage ingest: ingest.source: 'gone.csv' does not exist"), message
    assert "retrain check" in message and "stage run" not in message, message
    # a file an earlier stage writes keeps the stage hint
    version_ctx = StageContext(find_stage(DAG, "version"), params, root, tracking)
    with pytest.raises(DataError, match=r"input data/raw/snapshot\.parquet does not exist; an earlier stage"):
        version_ctx.key_material()


def test_set_errors_name_the_option_not_the_params_file(tmp_path: Path, caplog) -> None:
    root = tiny_project(tmp_path / "p")
    before = listing(root)
    done = cli(root, caplog, "run", "--set", "evaluate.metric=xx", "--set", "seed", "--set", "dataset.slices=[cty]")
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert "the --set options, not params.yaml: 3 problems found before anything ran" in err, err
    for line in (
        "--set evaluate.metric=xx: evaluate.metric 'xx' does not fit task 'binary'",
        "--set seed: not of the form section.key=value",
        "--set dataset.slices=[cty]: dataset.slices: 'cty' (did you mean 'city'?) not a column of t.csv",
    ):
        assert f"  {line}" in err, f"every bad option named, all at once; missing {line!r} in:\n{err}"
    assert listing(root) == before, "nothing may be written"

    # a problem of the file itself stays the file's; the header names both
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["split"] = {"valid_sise": 0.2}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = cli(root, caplog, "check", "--set", "dataset.slices=[cty]")
    assert done.returncode == 2, done.stderr
    assert "params.yaml and its --set options: 2 problems" in done.stderr, done.stderr
    assert "\n  split.valid_sise: unknown key" in done.stderr, "the file's own typo is not put on the --set"
    assert "\n  --set dataset.slices=[cty]: dataset.slices: 'cty'" in done.stderr, done.stderr


def test_a_read_only_tracking_database_is_named_before_anything_runs(tmp_path: Path, caplog) -> None:
    import sqlite3

    root = tiny_project(tmp_path / "p")
    db = root / "mlflow.db"
    with sqlite3.connect(db) as conn:  # any SQLite file: the check is on the file, before MLflow opens it
        conn.execute("CREATE TABLE t (a)")
    before = listing(root)
    with mode(db, 0o444):
        done = unprivileged_cli(root, "run")
    assert done.returncode == 2, done.stderr
    assert f"tracking.tracking_uri: MLflow tracking database {db} is read-only (-r--r--r--" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    with mode(root, 0o555):  # the folder: SQLite cannot write its journal there
        done = unprivileged_cli(root, "check")
    assert done.returncode == 2, done.stderr
    assert f"the folder {root} of MLflow tracking database {db} is read-only" in done.stderr, done.stderr
    assert listing(root) == before, "nothing may be written, the database least of all"
    # a URL opened read-only is named too, with the password of a URL never shown
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"] = {"tracking_uri": f"sqlite:///file:{db}?mode=ro&uri=true"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = cli(root, caplog, "check")
    assert done.returncode == 2 and f"{db} is opened read-only by its URI (mode=ro)" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def rejected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A real project (git, DVC, remote in tmp) whose data gate rejects the snapshot: ingest, version, validate."""
    params = small_params(validate={"min_rows": 100_000})  # 2,500 sampled rows: the row-count check fails
    root = make_project(tmp_path_factory.mktemp("messages") / "proj", params)
    from flows.cli import main

    with rooted(root):
        assert main(["stage", "ingest"]) == 0
        assert main(["stage", "version"]) == 0
        code = main(["stage", "validate"])
    return root, code


def test_a_snapshot_the_data_gate_rejects_is_not_pushed(rejected: tuple[Path, int]) -> None:
    root, code = rejected
    assert code == 2, "a failed data gate is bad input data: exit 2, as before"
    record = yaml.safe_load((root / "data/raw/version.json").read_text())
    md5 = record["md5"]
    remote = root.parent / f"{root.name}-remote" / "files" / "md5" / md5[:2] / md5[2:]
    assert not remote.exists(), f"the rejected snapshot {md5} was pushed to the DVC remote"
    cache = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert cache.is_file(), "the rejected snapshot stays in the local DVC cache, to be looked at"
    assert not (root / "models/validate/report.json").exists(), "a failed gate writes no report"

    # the same snapshot, once it passes the gate, is pushed (by validate: version did not)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["validate"]["min_rows"] = 1000
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from flows.cli import main

    with rooted(root):
        assert main(["stage", "validate"]) == 0
    assert remote.is_file(), f"the snapshot {md5} that passed the gate is on the DVC remote"


def test_a_write_refused_by_a_read_only_store_is_translated(rejected: tuple[Path, int], tmp_path: Path) -> None:
    """The runtime fallback (adapters/mlflow_errors.translate) on MLflow's real error, for a store read-only later."""
    from mlflow.tracking import MlflowClient

    from adapters.mlflow_errors import ReadOnlyRegistryError, translate

    root, _ = rejected
    copy = tmp_path / "mlflow.db"
    shutil.copyfile(root / "mlflow.db", copy)
    before = copy.read_bytes()
    uri = f"sqlite:///file:{copy}?mode=ro&uri=true"
    with pytest.raises(Exception) as caught:
        MlflowClient(uri).create_experiment("refused")
    assert "readonly database" in str(caught.value), "MLflow's own error, naming no file"
    error = translate(caught.value, uri)
    assert isinstance(error, ReadOnlyRegistryError), error
    assert str(error).startswith(f"MLflow tracking database {copy} is opened read-only"), error
    assert copy.read_bytes() == before, "nothing written"
    other = RuntimeError("disk full")
    assert translate(other, uri) is other, "any other error is left as it is"
    server = translate(caught.value, "postgresql+psycopg2://etl:s3cret@db.internal/mlflow")
    assert "MLflow store postgresql+psycopg2://etl:***@db.internal/mlflow is read-only" in str(server), server
    assert "s3cret" not in str(server), "a URL's password is never shown"
