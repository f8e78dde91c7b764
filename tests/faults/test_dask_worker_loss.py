"""A Dask worker dies mid-trial (docs/scaleout.md, "Failure modes"): the scheduler re-runs the lost family on a live
worker, the re-run starts its own Optuna study (`<study>-retry2`) from the first trial, and the run completes with
every family saved. The worker is SIGKILLed while a trial is running, known from the trial's `ran_on` attribute in
the study's journal file (the process that runs it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from retrain.catalog import CANDIDATES
from tests.conftest import gates_off, make_project, small_params
from tests.flows.ops_project import kill_group, output, start

pytestmark = pytest.mark.e2e

RAN_ON = re.compile(r'"ran_on": ?"[^"]*:(\d+)"')


def first_trial_pid(journal: Path, process, timeout: float = 600) -> int:
    """The pid of the first worker seen starting a trial (its `ran_on` user attribute in the journal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before any trial started"
        if journal.is_file():
            found = RAN_ON.search(journal.read_text())
            if found:
                return int(found.group(1))
        time.sleep(0.1)
    pytest.fail(f"no trial started in {timeout} s")


def test_a_worker_killed_mid_trial_costs_a_rerun_not_the_run(
    tmp_path_factory: pytest.TempPathFactory, prefect_backend: None
) -> None:
    params = small_params(
        runner={"task_runner": "dask", "dask_workers": 2},
        candidates={
            "families": ["lightgbm", "logreg"],
            "n_trials": 4,
            "logreg": {"n_trials": 4},
            "storage": "journal:optuna.journal",
        },
        # the gates run after the loss this checks and have their own tests: off, as in test_scaleout_faults.py
        evaluate=gates_off(),
    )
    root = make_project(tmp_path_factory.mktemp("worker-loss") / "proj", params)
    (root.parent / "prefect").mkdir()
    journal = root / "optuna.journal"
    proc = start(root, log="loss")
    try:
        pid = first_trial_pid(journal, proc)
        os.kill(pid, signal.SIGKILL)  # the worker process itself (its nanny starts a new one)
        code = proc.wait(timeout=900)
    finally:
        with contextlib.suppress(Exception):
            kill_group(proc)
    out, err = output(root, "loss")
    assert code in (0, 3), f"the run did not survive the lost worker (exit {code}):\n{err[-5000:]}"
    summary = json.loads(out)
    assert {s["name"]: s["status"] for s in summary["stages"]}["candidates"] == "ran", summary["stages"]

    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = optuna.get_all_study_names(storage)
    killed = [n for n in names if any(t.user_attrs.get("ran_on", "").endswith(f":{pid}") for t in trials(storage, n))]
    assert len(killed) == 1, f"one study had a trial on the killed worker {pid}: {names}"
    [lost] = killed
    retry = f"{lost}-retry2"
    assert retry in names, f"the lost family was re-run in a study of its own: {names}"
    first, again = trials(storage, lost), trials(storage, retry)
    # the killed trial may have been cut between two suggestions: what it had drawn, the re-run draws again
    assert first[0].params.items() <= again[0].params.items(), (
        f"the re-run starts the same seeded search from its first trial: {first[0].params} vs {again[0].params}"
    )
    finished = [t for t in again if t.state.is_finished()]
    assert len(finished) == len(again) == 4, f"the re-run ran its whole budget: {[t.state.name for t in again]}"
    for family in ("lightgbm", "logreg"):
        assert (root / CANDIDATES / family).is_dir(), f"{family} was saved by the flow process"


def trials(storage: JournalStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of one study, in order."""
    return optuna.load_study(study_name=name, storage=storage).trials
