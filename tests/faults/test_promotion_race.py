"""Two workspaces promoting to ONE SQLite registry: the better candidate ends as champion, whatever the order.

Both workspaces are prepared up to evaluate once (module fixture: a real `retrain run --dry-run` each, against an
empty registry, so both gate records saw no champion): `better` tunes LightGBM, `worse` a logistic regression
held to a tiny C. Each scenario then promotes into a fresh registry (its own SQLite file, set as
tracking.tracking_uri in both workspaces): the second to promote finds champion moved, re-compares against it
on its own test rows (tasks/promote.py), and is promoted only if it still passes. The registry lock is a file
next to that SQLite file, so the two workspaces exclude each other.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adapters import mlflow_audit as audit
from adapters.jsonfile import read_json
from flows.cli import main
from tests.conftest import make_project, small_params
from tests.flows.ops_project import RETRAIN, env_for

pytestmark = pytest.mark.e2e

MODEL = "adult-income"
RECORD = "models/evaluate/gate_record.json"
PROMOTION = "models/promote/promotion.json"
OFF = ("perturbation", "invariance", "directional", "calibration", "confidence", "fairness", "serving")
ROUNDS = 1
"""Concurrent races (each a fresh registry, both `retrain stage promote` processes started together)."""


@dataclass(frozen=True)
class Workspaces:
    """The two prepared workspaces and their evaluated candidates' test scores and model hashes."""

    better: Path
    worse: Path

    def record(self, root: Path) -> dict[str, Any]:
        return read_json(root / RECORD)

    def model_hash(self, root: Path) -> str:
        return self.record(root)["candidate"]["model_hash"]


def fresh_dvc_yaml(root: Path) -> None:
    """dvc.yaml generated from the stage table of this checkout (as `retrain stages --dvc-yaml`), committed."""
    from flows.dag import dvc_yaml_text
    from retrain.config import load_params

    (root / "dvc.yaml").write_text(dvc_yaml_text(root, load_params(root / "params.yaml")))
    subprocess.run(["git", "commit", "-qam", "dvc.yaml of this checkout"], cwd=root, capture_output=True, check=False)


def set_registry(root: Path, uri: str) -> None:
    """Point the workspace's tracking store (and so its registry) at `uri`."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"]["tracking_uri"] = uri
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def spaces(tmp_path_factory: pytest.TempPathFactory, prefect_backend: None) -> Iterator[Workspaces]:
    """Two workspaces evaluated once against an empty registry (the worse one is a copy with other candidates)."""
    base = tmp_path_factory.mktemp("race")
    gates = {gate: {"enabled": False} for gate in OFF} | {
        "metric_bounds": {"min": {"roc_auc": 0.75}, "max": {"log_loss": 0.6}},
        "baseline": {"margin": 0.0},
        # relative bounds on: the re-comparison reads the new champion's gate record (never binding at 100x)
        "latency": {"max_p95_ratio_vs_champion": 100.0, "max_size_ratio_vs_champion": 100.0},
    }
    params = small_params(
        tracking={"tracking_uri": f"sqlite:///{base / 'prepare.db'}"},
        candidates={"families": ["lightgbm"], "lightgbm": {"fixed": {"n_estimators": 300}}},
        evaluate={"gates": gates},
    )
    better = make_project(base / "better", params)
    fresh_dvc_yaml(better)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRAIN_ROOT", str(better))
        mp.chdir(better)
        assert main(["run", "--dry-run"]) == 0, "the better workspace evaluates (dry run: registry untouched)"
        worse = base / "worse"
        shutil.copytree(better, worse, symlinks=True)  # same data and splits: only candidates and evaluate rerun
        tuned = yaml.safe_load((worse / "params.yaml").read_text())
        tuned["candidates"]["families"] = ["logreg"]
        tuned["candidates"]["logreg"] = {
            "fixed": {"max_iter": 200},
            "n_trials": 1,
            "space": {"C": {"low": 1e-4, "high": 2e-4, "log": True}},
        }
        (worse / "params.yaml").write_text(yaml.safe_dump(tuned, sort_keys=False))
        mp.setenv("RETRAIN_ROOT", str(worse))
        mp.chdir(worse)
        assert main(["run", "--dry-run"]) == 0, "the worse workspace evaluates"
    spaces = Workspaces(better, worse)
    for root in (better, worse):
        record = spaces.record(root)
        assert record["decision"] == "promote" and record["champion"] is None, (
            f"{root.name}: both candidates pass every gate against no champion: {record['failed_gates']}"
        )
    better_auc, worse_auc = (spaces.record(r)["scores"]["candidate"] for r in (better, worse))
    assert better_auc > worse_auc + 0.02, f"the scores must differ clearly: better {better_auc}, worse {worse_auc}"
    yield spaces


def promote_in(root: Path, mp: pytest.MonkeyPatch) -> int:
    """`retrain stage promote` in this workspace, in this process."""
    mp.setenv("RETRAIN_ROOT", str(root))
    mp.chdir(root)
    return main(["stage", "promote"])


def champion_hash(uri: str) -> str:
    """The champion's model hash in the registry at `uri`."""
    return MlflowClient(uri).get_model_version_by_alias(MODEL, "champion").tags["retrain.model_hash"]


def fresh_registry(spaces: Workspaces, where: Path) -> str:
    """A new, empty SQLite registry both workspaces point at."""
    uri = f"sqlite:///{where}"
    for root in (spaces.better, spaces.worse):
        set_registry(root, uri)
    return uri


def test_worse_promoted_first_then_better_recompares_and_wins(spaces: Workspaces, tmp_path: Path) -> None:
    uri = fresh_registry(spaces, tmp_path / "a.db")
    with pytest.MonkeyPatch.context() as mp:
        assert promote_in(spaces.worse, mp) == 0, "first promotion into an empty registry"
        assert promote_in(spaces.better, mp) == 0, "the better candidate wins the re-comparison"
    assert champion_hash(uri) == spaces.model_hash(spaces.better), "the better model is champion"
    promotion = read_json(spaces.better / PROMOTION)
    assert promotion["action"] == "promoted", promotion
    recompared = promotion["recompared"]
    assert recompared["champion_at_evaluate"] is None and recompared["champion"]["version"] == "1", recompared
    gate = next(g for g in recompared["gates"] if g["name"] == "no_regression_vs_champion")
    assert gate["status"] == "pass" and "improvement vs champion +" in gate["reason"], gate
    latency = next(g for g in recompared["gates"] if g["name"] == "latency")
    assert latency["status"] == "pass" and "champion p95" in latency["reason"], f"relative bounds applied: {latency}"
    moves = [
        (e["alias"], e["from_version"], e["to_version"]) for e in audit.entries(uri, MODEL) if e["alias"] == "champion"
    ]
    assert moves == [("champion", None, "1"), ("champion", "1", "2")], moves
    last = [e for e in audit.entries(uri, MODEL) if e["alias"] == "champion"][-1]
    assert last["gate_record"] == recompared["gate_record"] and last["gate_record"].endswith(
        "gate_record_recompared.json"
    )
    mlflow.set_tracking_uri(uri)
    logged = mlflow.artifacts.load_dict(last["gate_record"])
    assert logged["champion"]["version"] == "1" and logged["scores"]["champion"] is not None, (
        "re-compared record logged"
    )
    version = MlflowClient(uri).get_model_version(MODEL, "2")
    assert version.tags["retrain.gate_record"] == last["gate_record"], "the version points at the re-compared record"
    assert (tmp_path / "a.db.registry.lock").exists(), "the registry lock sits next to the shared store"


def test_better_promoted_first_then_worse_recompares_and_loses(spaces: Workspaces, tmp_path: Path) -> None:
    uri = fresh_registry(spaces, tmp_path / "b.db")
    with pytest.MonkeyPatch.context() as mp:
        assert promote_in(spaces.better, mp) == 0
        assert promote_in(spaces.worse, mp) == 3, "losing the re-comparison is a gate rejection (exit 3)"
    assert champion_hash(uri) == spaces.model_hash(spaces.better), "the better model stays champion"
    client = MlflowClient(uri)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1, "the loser is not registered"
    assert {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()} == {
        "champion": "1",
        "challenger": "1",
    }, "no alias moved"
    promotion = read_json(spaces.worse / PROMOTION)
    assert promotion["action"] == "rejected_on_recompare", promotion
    message = promotion["message"]
    for part in ("champion version 1", "no_regression_vs_champion FAIL", "roc_auc"):
        assert part in message, f"{part!r} not in the message: {message}"
    assert promotion["recompared"]["decision"] == "reject", promotion["recompared"]
    assert [e["alias"] for e in audit.entries(uri, MODEL)] == ["challenger", "champion"], "only the winner's moves"


def test_concurrent_promotions_always_leave_the_better_champion(spaces: Workspaces, tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        uri = fresh_registry(spaces, tmp_path / f"c{round_}.db")  # also a fresh store: both create it at once
        procs = {}
        for root in (spaces.better, spaces.worse):
            log = (tmp_path / f"{root.name}-{round_}.err").open("w")
            procs[root.name] = subprocess.Popen(
                [RETRAIN, "stage", "promote"], cwd=root, env=env_for(root), stdout=log, stderr=log, text=True
            )
        codes = {name: proc.wait(timeout=300) for name, proc in procs.items()}
        errs = {name: (tmp_path / f"{name}-{round_}.err").read_text() for name in procs}
        assert codes["better"] == 0, f"round {round_}: better exited {codes['better']}:\n{errs['better'][-3000:]}"
        assert codes["worse"] in (0, 3), f"round {round_}: worse exited {codes['worse']}:\n{errs['worse'][-3000:]}"
        assert champion_hash(uri) == spaces.model_hash(spaces.better), f"round {round_}: the better model is champion"
        actions = {name: read_json(getattr(spaces, name) / PROMOTION)["action"] for name in procs}
        assert actions in (
            {"better": "promoted", "worse": "rejected_on_recompare"},  # better first
            {"better": "promoted", "worse": "promoted"},  # worse first, then better re-compared and won
        ), f"round {round_}: {json.dumps(actions)}"


def test_with_a_prefect_server_and_a_tracking_server_the_lock_is_a_global_concurrency_limit(
    prefect_backend: None,
) -> None:
    import threading
    import time

    from adapters.registry_lock import RegistryBusyError, registry_lock, resolve_kind

    server = "http://127.0.0.1:5999"  # an MLflow tracking server's URI: the lock itself only talks to Prefect
    assert resolve_kind("auto", server) == "prefect", "an http tracking URI with a Prefect server: Prefect's limit"
    sqlite = f"sqlite:///{Path(tempfile.gettempdir()) / 'x.db'}"
    assert resolve_kind("auto", sqlite) == "file", "SQLite keeps the file lock"
    outcome: dict[str, str] = {}

    def second() -> None:  # another promotion while the first holds the slot
        started = time.perf_counter()
        try:
            with registry_lock(server, "race-model", "auto", 2.0):
                outcome["second"] = "acquired while held"
        except RegistryBusyError as exc:
            outcome["second"] = f"{time.perf_counter() - started:.1f}s {exc}"

    with registry_lock(server, "race-model", "auto", 10.0) as which:
        assert which == "Prefect global concurrency limit retrain-registry-race-model", which
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=60)
    assert "still occupied after 2s" in outcome.get("second", ""), f"the second waited and timed out: {outcome}"
    with registry_lock(server, "race-model", "auto", 10.0):
        pass  # released on exit: taken again at once
