"""Two `retrain run` processes started at once on one workspace are serialized by the workspace lock."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from adapters import mlflow_audit as audit
from adapters.dvc_store import file_md5
from adapters.mlflow_registry import MODEL_HASH_TAG
from engine import recovery
from flows import outcome
from tests.conftest import small_params
from tests.flows.ops_project import env_for, kill_group, output, shared_project, start
from tests.flows.prefect_outcome import outcome_markdown, state_history

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

MODEL = small_params()["promote"]["model_name"]
OVERRIDE = ("--set", 'candidates.families=["lightgbm"]')  # another best model than the default's
EXPERIMENT_STAGES = {"candidates", "evaluate", "promote"}  # what the override changes


def dvc_status(root: Path) -> dict:
    """`dvc status --json` of the project."""
    env = {k: v for k, v in env_for(root).items() if k != "RETRAIN_ROOT"}
    done = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "{}")


def test_two_runs_at_once_end_cleanly_and_champion_is_the_better_model(
    tmp_path_factory: pytest.TempPathFactory, prefect_backend: None
) -> None:
    root = shared_project(tmp_path_factory)
    procs = {"default": start(root, log="conc-default"), "override": start(root, *OVERRIDE, log="conc-override")}
    try:
        codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            kill_group(proc)
    summaries = {}
    for name, code in codes.items():
        out, err = output(root, f"conc-{name}")
        assert code in (0, 3), f"{name} run exited {code}: {err[-3000:]}"
        summaries[name] = json.loads(out)
    errs = {name: output(root, f"conc-{name}")[1] for name in procs}
    assert any("workspace lock" in err and "is held by pid" in err for err in errs.values()), (
        "one run waited for the other's workspace lock"
    )
    for name, err in errs.items():  # the terminal without -v: our lines, Prefect's flow-run lines, no third-party noise
        for noise in ("UserWarning", "it/s]", "system_metrics", "prefect.task_runs", "Downloading artifacts"):
            assert noise not in err, f"{name}: {noise!r} on stderr without -v:\n{err[-3000:]}"
        assert "prefect.flow_runs: Finished in state" in err, f"{name}: the flow run's final state line is kept"
        ran = {stage["name"] for stage in summaries[name]["stages"] if stage["status"] == "ran"}
        if "candidates" in ran:
            assert "trial 1/2" in err, f"{name}: a progress line per tuning trial"
        if "evaluate" in ran:
            assert "gate beats_baselines: " in err, f"{name}: a progress line per gate"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)

    # dvc.lock: valid YAML, and every stage the override cannot touch matches the workspace files
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for name, stage in lock["stages"].items():
        if name in EXPERIMENT_STAGES:
            continue
        for out in stage.get("outs", []):
            path = root / out["path"]
            if path.is_file():
                assert file_md5(path) == out["md5"], f"dvc.lock disagrees with {out['path']} (stage {name})"
    changed = set(dvc_status(root))
    assert changed <= EXPERIMENT_STAGES, f"dvc status shows more than the override experiment: {changed}"

    # registry: one version per model hash, numbered without gaps, every run's version still there
    versions = client.search_model_versions(f"name='{MODEL}'")
    hashes = [v.tags.get(MODEL_HASH_TAG) for v in versions]
    assert len(hashes) == len(set(hashes)), f"duplicate model hash in the registry: {hashes}"
    numbers = sorted(int(v.version) for v in versions)
    assert numbers == list(range(1, len(numbers) + 1)), f"a version was lost: {numbers}"
    for name, summary in summaries.items():
        if summary["model_version"] is not None:
            assert int(summary["model_version"]) in numbers, f"{name}'s version {summary['model_version']} is gone"

    # champion: the better model unless the gates kept the other (a better point estimate not shown significant)
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    score = {name: s["metrics"]["evaluate"]["test_roc_auc"] for name, s in summaries.items()}
    winners = [name for name, s in summaries.items() if s["model_version"] == champion]
    versions_by_run = {n: s["model_version"] for n, s in summaries.items()}
    assert winners, f"champion v{champion} is neither run's model: {versions_by_run}"
    for loser in set(summaries) - set(winners):
        if score[loser] > score[winners[0]]:
            assert summaries[loser]["decision"] == "reject", (
                f"{loser} scored {score[loser]:.4f} > champion's {score[winners[0]]:.4f} and was not rejected"
            )

    # audit: each alias moves in a chain (from = the previous to)
    for alias in ("challenger", "champion"):
        chain = [e for e in audit.entries(uri, MODEL) if e["alias"] == alias]
        for before, after in itertools.pairwise(chain):
            assert after["from_version"] == before["to_version"], f"{alias} audit chain broken: {before} -> {after}"
        if alias == "champion" and chain:
            assert chain[-1]["to_version"] == champion, "the last champion move is where champion points"
    logger.info("concurrency: scores %s, champion v%s (%s)", score, champion, winners)

    # Prefect: the run that waited said so in its state, naming the holder; each ends named after its decision
    waiters = [name for name, err in errs.items() if "is held by pid" in err]
    for name, summary in summaries.items():
        history = state_history(summary["prefect_flow_run_id"])
        names = [state_name for _, state_name, _ in history]
        expected = outcome.STATE_NAMES[summary["promotion"]]
        assert history[-1][:2] == ("COMPLETED", expected), f"{name} ended {history[-1]}, expected {expected}"
        markdown = outcome_markdown(summary["prefect_flow_run_id"])
        assert markdown.startswith(f"## {expected}: {MODEL}") and "### Gates" in markdown, markdown[:300]
        if name not in waiters:
            assert recovery.AWAITING_LOCK not in names, f"{name} never waited: {history}"
            continue
        [other] = set(procs) - {name}
        wait = names.index(recovery.AWAITING_LOCK)
        _, _, message = history[wait]
        assert f"held by pid {procs[other].pid}" in message, f"the waiting state names the holder: {message!r}"
        assert history[wait - 1][:2] == ("RUNNING", "Running") and history[wait + 1][:2] == ("RUNNING", "Running"), (
            f"Running, then AwaitingLock, then Running again once acquired: {history}"
        )
        logger.info("concurrency: %s waited; states %s", name, names)


def test_a_busy_workspace_lock_fails_after_the_timeout_naming_its_holder(tmp_path: Path) -> None:
    from engine.recovery import POLL_SECONDS, WorkspaceBusyError, acquire, workspace_lock

    told: list[str | None] = []
    with workspace_lock(tmp_path, "schedule", "flow run abc"):
        started = time.monotonic()
        with pytest.raises(WorkspaceBusyError) as err:
            acquire(tmp_path, "cli", "stage split", timeout=0.5, on_wait=told.append)
        waited = time.monotonic() - started
    message = str(err.value)
    assert f"pid {os.getpid()}" in message and "schedule: flow run abc" in message, message
    assert 0.4 < waited < 5, f"waited {waited:.1f}s for a 0.5 s timeout"
    assert len(told) == 1 and "schedule: flow run abc" in str(told[0]), f"the wait hook hears the holder: {told}"
    with workspace_lock(tmp_path, "cli", "stage split", timeout=0):
        pass  # released by the first holder: free again

    # waited, then acquired: the hook hears the holder, then None; a free lock tells it nothing
    told.clear()
    first = acquire(tmp_path, "ui", "flow run def")
    timer = threading.Timer(POLL_SECONDS + 0.5, first.release)  # a wait shorter than one poll is not announced
    timer.start()
    acquire(tmp_path, "cli", "flow run ghi", timeout=30, on_wait=told.append).release()
    timer.join()
    assert len(told) == 2 and "ui: flow run def" in str(told[0]) and told[1] is None, told
    told.clear()
    acquire(tmp_path, "cli", "flow run jkl", timeout=0, on_wait=told.append).release()
    assert told == [], "no wait, no call"


def test_the_flow_skips_dvc_lock_when_dvc_repro_holds_the_repo_lock(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from dvc.repo import Repo

    from engine.context import Tracking
    from engine.pipeline import PipelineRun
    from retrain.config import Params

    root = shared_project(tmp_path_factory)
    before = (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else None
    run = PipelineRun(root, Params.model_validate(small_params()), Tracking("sqlite://", "0", None), True)
    repo = Repo(str(root))
    repo.lock.lock()  # what a running `dvc repro` holds
    try:
        run.record_lineage()  # must not raise nor wait forever: the waiting dvc repro writes dvc.lock itself
    finally:
        repo.lock.unlock()
    after = (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else None
    assert after == before, "dvc.lock untouched while DVC's repo lock is held"
