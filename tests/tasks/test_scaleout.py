"""runner.task_runner: dask on a real 2-worker LocalCluster: families run as Prefect tasks in worker processes
(plain Dask futures outside a flow), and the models are the same bytes as the default runner's."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from engine.context import tree_md5
from engine.pipeline import standalone_stage
from engine.scaleout import CodeMismatchError, cluster_kwargs, family_runner
from flows.cli import main
from flows.dag import DAG
from retrain.catalog import CANDIDATES
from retrain.config import RunnerConfig, load_params
from tasks import candidates
from tests.conftest import gates_off, make_project, small_params

DASK = RunnerConfig(task_runner="dask", dask_workers=2)


def where(family: str) -> tuple[str, int]:
    """The process a call ran in (module level, so Dask ships it to workers by reference)."""
    return family, os.getpid()


def test_local_cluster_listens_on_loopback_only() -> None:
    kwargs = cluster_kwargs(DASK)
    assert kwargs["host"] == "127.0.0.1" and kwargs["dashboard_address"] is None, kwargs
    assert kwargs["n_workers"] == 2 and kwargs["processes"], "worker processes, not threads of this one"


def test_default_runner_calls_in_this_process_on_demand() -> None:
    calls = {"a": {"family": "a"}, "b": {"family": "b"}}
    with family_runner(RunnerConfig(), where, calls) as outcome:
        assert outcome("b") == ("b", os.getpid()), "default: computed here, when asked"


@pytest.mark.slow
def test_dask_runner_outside_a_flow_uses_worker_processes() -> None:
    """`retrain stage candidates` under dvc: plain Dask futures, no Prefect API needed."""
    calls = {name: {"family": name} for name in ("a", "b", "c")}
    with family_runner(DASK, where, calls) as outcome:
        results = {name: outcome(name) for name in calls}
    assert [r[0] for r in results.values()] == ["a", "b", "c"], "results come back by name, in order"
    assert all(pid != os.getpid() for _, pid in results.values()), f"ran in this process: {results}"


def task_runs(flow_run_id: str) -> dict[str, str]:
    """Name -> state of the task runs Prefect recorded for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        # limit and sort explicit: the pinned server (fastapi 0.154) rejects the client's nulls with 422
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=50, sort=TaskRunSort.ID_DESC
        )
    return {r.name: r.state_type.value for r in runs}


@pytest.mark.e2e
def test_flow_on_dask_gives_the_default_runners_models(tmp_path: Path, use_root, capsys, prefect_backend) -> None:
    """The whole flow on a 2-worker LocalCluster, then candidates again on the default runner: same bytes."""
    families = ["lightgbm", "logreg", "stacking"]  # stacking: base models that came back from a worker
    runner = {"task_runner": "dask", "dask_workers": 2}
    # the gates judge what came back and have their own tests: off, as in tests/faults (evaluate ran ~6 s of them)
    params = small_params(candidates={"families": families}, runner=runner, evaluate=gates_off())
    root = use_root(make_project(tmp_path / "proj", params))
    assert main(["run", "--json"]) == 0, "the flow completes and promotes on the Dask runner"
    summary = json.loads(capsys.readouterr().out)
    assert summary["promotion"] == "promoted", summary["promotion"]
    tasks = task_runs(summary["prefect_flow_run_id"])
    assert tasks["candidates/lightgbm"] == tasks["candidates/logreg"] == "COMPLETED", f"family task runs: {tasks}"
    on_dask = {f: tree_md5(root / CANDIDATES / f) for f in families}
    on_dask["summary"] = tree_md5(root / CANDIDATES / "summary.json")
    default = load_params(root / "params.yaml", ["runner.task_runner=default"])
    standalone_stage(root, default, DAG, candidates.STAGE, "cli")
    here = {f: tree_md5(root / CANDIDATES / f) for f in families}
    here["summary"] = tree_md5(root / CANDIDATES / "summary.json")
    assert on_dask == here, "the Dask runner must build byte-identical models (same CV scores, same champion)"


def shared_design() -> tuple[candidates.Design, object]:
    """The stacking tests' binary design on 3,000 rows, with searches of 12 trials tried 2 at a time (hgb: ~0.5 s
    a trial here, so the second loop, which needs a second or two to start, finds trials left)."""
    from tests.unit.test_stacking import config, design

    cfg = config(("logreg", "hgb")).model_copy(update={"n_trials": 12, "parallel_trials": 2})
    return design("binary", n=3000), cfg


@pytest.mark.slow
def test_trials_spread_over_dask_workers_through_a_shared_study(tmp_path: Path) -> None:
    """parallel_trials 2 on a Dask worker: the second trial loop runs on another worker process, on the same
    study through an RDB storage, and the best trial's out-of-fold scores come back whichever loop ran it."""
    import optuna
    from distributed import Client, LocalCluster

    d, cfg = shared_design()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with LocalCluster(**cluster_kwargs(DASK)) as cluster, Client(cluster) as client:
        code = candidates.code_identity(candidates.__name__)
        # imported on every worker first, as after a first run: a loop that starts seconds late (its worker's
        # cold imports) finds the tiny budget spent and rightly runs nothing
        client.run(importlib.import_module, "tasks.candidates")
        future = client.submit(candidates.fit_family_at, "hgb", d, cfg, storage, "hgb-spread", code=code)
        outcome = future.result()
        workers = set(client.run(os.getpid).values())
    trials = optuna.load_study(study_name="hgb-spread", storage=storage).trials
    ran_on = {t.user_attrs.get("ran_on", "?").rpartition(":")[2] for t in trials}
    assert 12 <= len(trials) <= 13, f"the study stops at the budget (each loop may start one more): {len(trials)}"
    assert len(ran_on) == 2 and {int(p) for p in ran_on} <= workers, f"two worker processes ran trials: {ran_on}"
    assert str(os.getpid()) not in ran_on, "no trial ran in the test's process"
    result = outcome.result
    assert result.oof is not None and len(result.oof) == len(d.y_train), "the best trial's out-of-fold scores"
    assert len(result.trials) == len(trials), "the result lists every trial of the shared study"


def test_a_worker_with_other_code_refuses_the_family() -> None:
    d, cfg = shared_design()
    with pytest.raises(CodeMismatchError, match="deploy the flow's commit"):
        candidates.fit_family_at("logreg", d, cfg, None, "logreg-x", code="0" * 32)


def test_a_rerun_family_gets_a_fresh_study(tmp_path: Path) -> None:
    """A family re-run after its worker died must not continue the dead attempt's study (its trials, a stale
    running one): it gets `<name>-retry2`, then `-retry3`."""
    import optuna

    from retrain.models.tuning import unused_study_name

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert unused_study_name(storage, "lightgbm-run1") == "lightgbm-run1"
    optuna.create_study(study_name="lightgbm-run1", storage=storage)
    assert unused_study_name(storage, "lightgbm-run1") == "lightgbm-run1-retry2"
    optuna.create_study(study_name="lightgbm-run1-retry2", storage=storage)
    assert unused_study_name(storage, "lightgbm-run1") == "lightgbm-run1-retry3"
    assert unused_study_name(None, "lightgbm-run1") == "lightgbm-run1", "in memory: nothing to continue"


def final_booster(runner: RunnerConfig, d: candidates.Design, cfg: object) -> str:
    """The saved LightGBM model's booster text of a family fitted where this runs (module level: shipped to Dask)."""
    outcome = candidates.fit_family("lightgbm", d, cfg, runner=runner)
    return outcome.final_model.named_steps["model"].booster_.model_to_string()


@pytest.mark.slow
def test_a_large_lightgbm_fit_trains_data_parallel_on_the_cluster() -> None:
    """runner.dask_lightgbm_min_rows: the family's refits on at least that many rows train with lightgbm.dask over
    every worker (the booster records 2 machines); below it they stay in the family's process."""
    from distributed import Client, LocalCluster

    from tests.unit.test_stacking import config, design

    d, cfg = design("binary"), config(("lightgbm", "logreg"))
    large = RunnerConfig(task_runner="dask", dask_workers=2, dask_lightgbm_min_rows=200)
    small = large.model_copy(update={"dask_lightgbm_min_rows": 10_000})
    with LocalCluster(**cluster_kwargs(DASK)) as cluster, Client(cluster) as client:
        boosters = {
            r.dask_lightgbm_min_rows: client.submit(final_booster, r, d, cfg, pure=False) for r in (large, small)
        }
        texts = {rows: future.result(timeout=300) for rows, future in boosters.items()}
    assert "[num_machines: 2]" in texts[200], "400 rows >= 200: trained over both workers"
    assert "[num_machines: 1]" in texts[10_000], "400 rows < 10,000: trained in the family's process"


def test_search_rows_tunes_on_a_sample_and_refits_on_every_row() -> None:
    from tests.unit.test_stacking import config, design

    d = design("binary", n=800)  # 600 train rows
    cfg = config(("logreg", "hgb")).model_copy(update={"search_rows": 200})
    sample = candidates.search_design(d, 200)
    assert len(sample.y_train) == 200, f"the search's rows: {len(sample.y_train)}"
    share = abs(sample.y_train.mean() - d.y_train.mean())
    assert share <= 1 / 200, f"label-stratified: positive share {sample.y_train.mean():.3f} vs {d.y_train.mean():.3f}"
    assert candidates.search_design(d, None) is d, "null: the search sees every row"
    outcome = candidates.fit_family("logreg", d, cfg)
    assert len(outcome.result.oof) == 200, "out-of-fold scores of the sampled rows: the CV ran on the sample"
    assert outcome.result.fold_rows == 100, f"2 folds of the 200-row sample: {outcome.result.fold_rows}"
    assert len(outcome.valid_scores) == len(d.y_valid), "the refit on all train rows is scored on valid"


def test_search_rows_cannot_feed_stacking_and_lightgbm_on_dask_needs_the_dask_runner() -> None:
    from pydantic import ValidationError

    from tests.conftest import small_params

    with pytest.raises(ValidationError, match="search_rows: family 'stacking'"):
        load_params_dict(small_params(candidates={"families": ["lightgbm", "logreg", "stacking"], "search_rows": 500}))
    with pytest.raises(ValidationError, match=r"runner.dask_lightgbm_min_rows .* needs runner.task_runner: dask"):
        load_params_dict(small_params(runner={"dask_lightgbm_min_rows": 1000}))


def load_params_dict(params: dict) -> object:
    """Params from a dict, validated as a params file is."""
    from retrain.config import Params

    return Params.model_validate(params)
