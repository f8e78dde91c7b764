"""The no-op fast path (engine/noop.py) on a real project after one real `retrain run` (tests/promotion_project.py).

Every kind of input the stages' cache keys are made of is changed once, and the fast path must say "changed" and
name it; where the change is one the engine's cache sees, the engine's own keys must miss too (they agree).
An untouched workspace is "unchanged", decided without importing Prefect, MLflow or DVC.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from filelock import FileLock
from mlflow.tracking import MlflowClient

from engine import noop

MODEL = "adult-income"


def engine_misses(root: Path) -> set[str]:
    """The cached stages the engine would not take as they are: no record for their cache key (engine/context.py,
    with the key_inputs hooks), or a record whose outputs differ from the workspace (engine/runner.py restores)."""
    from engine.context import CACHE_DIR, StageContext, Tracking
    from flows.dag import DAG
    from flows.training import checked_params
    from retrain.errors import DataError

    params = checked_params(root, "params.yaml", [])
    missed, tags = set(), {}
    for stage in DAG:
        ctx = StageContext(stage, params, root, Tracking(f"sqlite:///{root / 'mlflow.db'}", "0", None, dict(tags)))
        try:
            if stage.tags is not None:  # the lineage tags a flow passes on (data hash after ingest), as `retrain stage`
                tags |= stage.tags(root, None)
            if not stage.cache:
                continue
            if stage.key_inputs is not None:
                ctx = replace(ctx, external=stage.key_inputs(ctx))
            key = ctx.cache_key()
        except (DataError, OSError):  # an input is gone: the stage (or the one writing it) runs
            missed.add(stage.name)
            continue
        record = root / CACHE_DIR / str(key)
        if key is None or not record.is_file():
            missed.add(stage.name)
            continue
        outs = json.loads(json.loads(record.read_text())["result"])["outs"]
        if any(not (root / rel).is_file() or noop.file_md5(root / rel) != md5 for rel, md5 in outs.items()):
            missed.add(stage.name)
    return missed


def edit_params(root: Path, key: str, value: object) -> None:
    """Set a dotted params.yaml key."""
    values = yaml.safe_load((root / "params.yaml").read_text())
    *path, last = key.split(".")
    node = values
    for part in path:
        node = node[part]
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))


def append(rel: str, text: bytes = b"\n# edited\n") -> Callable[[Path], None]:
    """A change that appends bytes to a workspace file."""

    def change(root: Path) -> None:
        with (root / rel).open("ab") as handle:
            handle.write(text)

    return change


def add_row(root: Path) -> None:
    """The training data gains one row (its last one again): a new data version."""
    path = root / "data/source/adult_train.csv.gz"
    with gzip.open(path, "rt") as handle:
        text = handle.read()
    with gzip.open(path, "wt") as handle:
        handle.write(text + text.rstrip("\n").rsplit("\n", 1)[-1] + "\n")


def delete(rel: str) -> Callable[[Path], None]:
    """A change that deletes a workspace file."""
    return lambda root: (root / rel).unlink()


def move_champion(root: Path) -> None:
    """Another process takes the champion alias away (what a rollback or another workspace's promote does)."""
    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").delete_registered_model_alias(MODEL, "champion")


def move_challenger(root: Path) -> None:
    """The challenger alias is gone: a rerun's promote would set it again."""
    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").delete_registered_model_alias(MODEL, "challenger")


def edit_dvc_yaml_cmd(root: Path) -> None:
    """dvc.yaml's split command differs from the one dvc.lock recorded."""
    document = yaml.safe_load((root / "dvc.yaml").read_text())
    document["stages"]["split"]["cmd"] += " --verbose"
    (root / "dvc.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


CHANGES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    # kind: (change, what the reason must name, whether the engine's cache sees it too; else promote would act,
    # or the change is one the engine ignores and the no-op check is stricter about)
    "data row": (add_row, "adult_train.csv.gz changed", True),
    "stage param": (lambda r: edit_params(r, "candidates.n_trials", 3), "candidates", True),
    "other param": (lambda r: edit_params(r, "tracking.experiment", "elsewhere"), "params.yaml", False),
    "code file": (append("retrain/models/tuning.py"), "retrain/models/tuning.py changed", True),
    "dvc.yaml command": (edit_dvc_yaml_cmd, "stage split: command", False),
    "out deleted": (delete("data/processed/valid.parquet"), "valid.parquet is missing", True),
    "out edited": (append("models/evaluate/gate_record.json", b" "), "models/evaluate changed", True),
    "environment lock": (append("requirements.lock"), "environment changed", True),
    "champion moved": (move_champion, "@champion is version None", False),
    "challenger moved": (move_challenger, "@challenger is version None", False),
    "stamp gone": (delete(noop.STAMP), "no completed run recorded", False),
}


def test_untouched_workspace_is_unchanged_and_engine_agrees(promo: Path) -> None:
    verdict = noop.decide(promo)
    assert verdict.unchanged, f"nothing changed after the run, yet: {verdict.reason}"
    assert verdict.champion_version == "1" and verdict.files_hashed > 20, verdict
    assert engine_misses(promo) == set(), "the engine's own cache keys all hit too"
    summary = verdict.summary
    assert summary["noop"] is True and summary["promotion"] == "unchanged", summary
    assert {s["status"] for s in summary["stages"]} == {"cached"} and len(summary["stages"]) == 8, summary["stages"]
    assert summary["decision"] == "promote" and summary["champion_version"] == "1", summary


@pytest.mark.parametrize("kind", list(CHANGES))
def test_each_kind_of_change_is_seen_and_named(promo: Path, kind: str) -> None:
    change, named, engine_sees = CHANGES[kind]
    change(promo)
    verdict = noop.decide(promo)
    assert not verdict.unchanged, f"{kind}: the fast path missed the change"
    assert named in verdict.reason, f"{kind}: the reason does not name it: {verdict.reason}"
    if engine_sees:
        assert engine_misses(promo), f"{kind}: the engine's cache keys should miss as well (the two must agree)"


def test_a_run_in_progress_means_changed(promo: Path) -> None:
    lock = FileLock(str(promo / noop.WORKSPACE_LOCK), thread_local=False)
    with lock:  # what engine/recovery.py holds for a whole run
        verdict = noop.decide(promo)
    assert not verdict.unchanged and "workspace lock" in verdict.reason, verdict.reason
    assert noop.decide(promo).unchanged, "once the lock is free the workspace is unchanged again"


def test_dir_hash_is_dvcs(promo: Path) -> None:
    """The `.dir` md5 (and size, file count) equal what `dvc commit` wrote to dvc.lock for every directory out."""
    lock = yaml.safe_load((promo / "dvc.lock").read_text())
    dirs = [o for s in lock["stages"].values() for o in s.get("outs", []) if o["md5"].endswith(".dir")]
    assert dirs, "the project has directory outputs (models/candidates, models/evaluate)"
    for out in dirs:
        assert noop.dir_md5(promo / out["path"]) == (out["md5"], out["size"], out["nfiles"]), out["path"]


PROBE = """
import json, sys
from flows.cli import main
code = main(["run", "--json"])
heavy = sorted(m for m in ("prefect", "mlflow", "dvc", "pandas", "sqlalchemy") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_cli_no_op_imports_neither_prefect_nor_mlflow(promo: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RETRAIN_TRIGGER"} | {"RETRAIN_ROOT": str(promo)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=promo, env=env, capture_output=True, text=True)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, f"a no-op must exit 0 before importing them: {done.stderr[-2000:]}"
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed" and summary["noop"] is True, summary
    assert "nothing changed, no run started" in done.stderr, done.stderr[-2000:]


def test_http_registry_reader_agrees_with_sqlite(promo: Path) -> None:
    """The REST reader (a real `mlflow server` on the project's store) sees what the read-only SQLite reader sees."""
    from adapters.registry_readonly import read_registry
    from tests.servers import free_port, wait_healthy

    port = free_port()
    store = f"sqlite:///{promo / 'mlflow.db'}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=promo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{base}/health", server, None, timeout=120)
        model_hash = MlflowClient(store).get_model_version_by_alias(MODEL, "champion").tags["retrain.model_hash"]
        local = read_registry(store, MODEL, "champion", model_hash)
        remote = read_registry(base, MODEL, "champion", model_hash)
        assert local.champion == "1", f"the promotion project's first run made version 1 champion: {local}"
        assert remote == local, f"REST reader {remote} differs from the SQLite reader {local}"
        move_champion(promo)
        assert read_registry(base, MODEL, "champion", model_hash).champion is None, "a moved alias is seen over REST"
    finally:
        server.terminate()
        server.wait(timeout=30)
