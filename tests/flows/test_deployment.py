"""Deployments: the typed request form, prefect.yaml as the one source, and worker-driven runs on a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows import deploy
from flows.training import RunRequest, retrain_flow
from retrain.config import load_params, lookup, stable_hash
from retrain.config import params_dict as as_dict
from tests.conftest import REPO, make_project, small_params
from tests.servers import free_port, wait_healthy

logger = logging.getLogger(__name__)
BIN = Path(sys.executable).parent
MODEL = "adult-income"
OUTCOME_ARTIFACT = "retrain-outcome"
"""The key of the Markdown artifact every run leaves (decision, gates, links)."""


def test_request_is_a_typed_form() -> None:
    """The UI form comes from the flow's parameter schema: every request field with its JSON type."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(retrain_flow.fn).model_dump()
    assert schema["properties"]["request"]["$ref"].endswith("/RunRequest"), f"request is not a model: {schema}"
    assert schema["properties"]["trigger"]["enum"] == ["cli", "ui", "schedule", "dvc"], "trigger is not a choice"
    fields = schema["definitions"]["RunRequest"]["properties"]

    def types(name: str) -> set[str]:
        spec = fields[name]
        return {s["type"] for s in spec.get("anyOf", [spec])}

    expected = {
        "params_file": {"string"},
        "source": {"string", "null"},
        "sample_rows": {"integer", "null"},
        "n_trials": {"integer", "null"},
        "timeout_seconds": {"object"},
        "baseline_margin": {"number", "null"},
        "champion_tolerance": {"number", "null"},
        "metric_min": {"object"},
        "overrides": {"array"},
        "dry_run": {"boolean"},
    }
    assert {name: types(name) for name in expected} == expected, "form fields or their types changed"
    assert all(fields[name].get("description") for name in expected), "every form field needs a help text"


def test_request_becomes_the_cli_overrides() -> None:
    """A filled form loads exactly like `retrain run --set ...`: same keys, same values, raw overrides last."""
    request = RunRequest(
        source="data/source/adult.data.gz",
        sample_rows=1234,
        n_trials=3,
        timeout_seconds={"lightgbm": 60},
        baseline_margin=0.01,
        champion_tolerance=0.002,
        metric_min={"roc_auc": 0.8},
        overrides=["candidates.n_trials=4"],
    )
    params = load_params(REPO / "params.yaml", request.to_overrides())
    got = {
        key: lookup(params, key)
        for key in (
            "ingest.source",
            "ingest.sample_rows",
            "candidates.n_trials",
            "candidates.lightgbm.timeout_seconds",
            "evaluate.gates.baseline.margin",
            "evaluate.gates.champion.tolerance",
        )
    }
    assert got == {
        "ingest.source": "data/source/adult.data.gz",
        "ingest.sample_rows": 1234,
        "candidates.n_trials": 4,  # the free-form override wins over the field
        "candidates.lightgbm.timeout_seconds": 60.0,
        "evaluate.gates.baseline.margin": 0.01,
        "evaluate.gates.champion.tolerance": 0.002,
    }, f"overrides {request.to_overrides()} loaded as {got}"
    base = load_params(REPO / "params.yaml").evaluate.gates.metric_bounds.min
    assert params.evaluate.gates.metric_bounds.min == {**base, "roc_auc": 0.8}, "metric_min must keep other bounds"
    assert RunRequest().to_overrides() == [], "an empty form must not override anything (default params, lineage)"


def test_prefect_yaml_is_the_one_source_of_the_deployments() -> None:
    """prefect.yaml passes `prefect deploy`'s own model, holds no path, and is exactly what `retrain serve` serves."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.flows import load_flow_from_entrypoint

    from flows.env import RUN_ENV

    text = (REPO / "prefect.yaml").read_text()
    raw = yaml.safe_load(text)
    PrefectYamlModel.model_validate(raw)
    assert str(REPO) not in text and "$PWD" not in text and "{{" not in text, "prefect.yaml must hold no path"
    assert raw["pull"] == [{"flows.deploy.enter_project": {}}], f"pull steps: {raw['pull']}"
    configs = {c["name"]: c for c in deploy.load_configs(REPO / "prefect.yaml")}
    assert set(configs) == {deploy.SCHEDULED, deploy.MANUAL}, f"deployments: {sorted(configs)}"
    served = {d.name: d for d in deploy.deployments(path=REPO / "prefect.yaml")}
    assert set(served) == set(configs), f"retrain serve builds {sorted(served)}"
    for name, config in configs.items():
        assert config["work_pool"]["name"] == deploy.WORK_POOL, f"{name}: wrong work pool"
        assert config["work_pool"]["job_variables"] == {"env": RUN_ENV}, f"{name}: job variables are not RUN_ENV"
        flow = load_flow_from_entrypoint(str(REPO / config["entrypoint"]))
        assert flow.name == retrain_flow.name, f"{config['entrypoint']} is not the training flow"
        flow.validate_parameters(config["parameters"])  # the fixed parameters fit the typed signature
        declared = [_schedule_config_to_deployment_schedule(s)["schedule"] for s in config.get("schedules", [])]
        got = served[name]
        assert [s.schedule.model_dump(mode="json") for s in got.schedules or []] == [
            s.model_dump(mode="json") for s in declared
        ], f"{name}: retrain serve's schedules differ from prefect.yaml"
        assert (got.parameters, got.description, got.tags, got.job_variables) == (
            config["parameters"],
            config["description"],
            config["tags"],
            config["work_pool"]["job_variables"],
        ), f"{name}: retrain serve's deployment differs from prefect.yaml"
    assert configs[deploy.SCHEDULED]["parameters"]["trigger"] == "schedule", "cron runs must record trigger=schedule"
    assert configs[deploy.MANUAL]["parameters"]["trigger"] == "ui", "UI runs must record trigger=ui"
    assert served[deploy.SCHEDULED].schedules[0].schedule.cron == "0 3 * * 1", "the default schedule is weekly"

    moved = {d.name: d for d in deploy.deployments("0 2 * * *", "Europe/Paris", path=REPO / "prefect.yaml")}
    cron = moved[deploy.SCHEDULED].schedules[0].schedule
    assert (cron.cron, cron.timezone) == ("0 2 * * *", "Europe/Paris"), f"--cron/--timezone not applied: {cron}"
    assert not moved[deploy.MANUAL].schedules, "an override must not give the manual deployment a schedule"
    unscheduled = deploy.deployments(schedule=False, path=REPO / "prefect.yaml")
    assert not any(d.schedules for d in unscheduled), "--no-schedule must drop the cron"


def test_the_pull_step_enters_the_workers_own_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prefect.yaml's pull step, imported as Prefect does, moves to $RETRAIN_ROOT, else the installed checkout.

    (The worker running it inside Prefect's step runner is the end-to-end test below.)
    """
    from prefect.utilities.importtools import import_object

    import retrain.paths
    from retrain.errors import ConfigError

    pull = yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"]
    [(name, inputs)] = [next(iter(step.items())) for step in pull]
    step = import_object(name)  # what prefect.deployments.steps.core.run_step calls
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)  # a worker's temporary working directory
    monkeypatch.setenv("RETRAIN_ROOT", str(checkout))
    assert step(**inputs) == {"directory": str(checkout.resolve())}, "the step must hand Prefect the project"
    assert Path.cwd() == checkout.resolve(), "the flow must run in the project"

    monkeypatch.delenv("RETRAIN_ROOT")
    monkeypatch.chdir(tmp_path)
    installed = Path(retrain.paths.__file__).resolve().parent.parent
    assert Path(step(**inputs)["directory"]) == installed, "without RETRAIN_ROOT: the checkout of the installed package"

    monkeypatch.setenv("RETRAIN_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="RETRAIN_ROOT"):
        step(**inputs)


def spawn(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A background process in its own process group, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM the process group this test started, then SIGKILL after a grace period."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def prefect_cli(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a `prefect` command the way a user types it; its stdout, or fail with its output unless it exits 0."""
    done = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"`prefect {' '.join(args)}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
    )
    return done.stdout


def started_run_id(output: str) -> str:
    """The flow run id `prefect deployment run` prints (`└── UUID: ...`)."""
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, f"no flow run id in the output of `prefect deployment run`:\n{output}"
    return match.group(1)


async def read_deployments(api_url: str) -> list[dict[str, Any]]:
    """The deployments as the server stores them (what every worker reads)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return [d.model_dump(mode="json") for d in await client.read_deployments()]


async def wait_final(api_url: str, ids: list[str], worker: subprocess.Popen, log: Path, timeout: float) -> dict:
    """Poll the flow runs until every one is in a final state; fail if the worker dies or time runs out."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            while True:
                assert worker.poll() is None, f"worker exited {worker.returncode}:\n{log.read_text()[-3000:]}"
                runs = {i: await client.read_flow_run(i) for i in ids}
                if all(r.state and r.state.is_final() for r in runs.values()):
                    return runs
                states = {r.name: r.state_name for r in runs.values()}
                assert time.monotonic() < deadline, f"not final in {timeout}s: {states}\n{log.read_text()[-3000:]}"
                await asyncio.sleep(3)


async def flow_run_logs(api_url: str, flow_run_id: Any) -> list[str]:
    """The flow run's log lines as the Prefect UI shows them (read from the server, page by page)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    lines: list[str] = []
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            while True:
                page = await client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                    limit=200,
                    offset=len(lines),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                lines += [f"{log.name}: {log.message}" for log in page]
                if len(page) < 200:
                    return lines


async def outcome_artifacts(api_url: str, flow_run_id: Any) -> list[Any]:
    """The flow run's `retrain-outcome` artifacts, as the run's Artifacts tab lists them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[OUTCOME_ARTIFACT]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                )
            )


def parent_run(client: MlflowClient, root: Path, flow_run_id: Any) -> tuple[Any, set[str]]:
    """The parent MLflow run a flow run logged, and the ids of all its MLflow runs."""
    experiment = client.get_experiment_by_name(load_params(root / "params.yaml").tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`retrain.prefect_flow_run_id` = '{flow_run_id}'"
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"expected one parent MLflow run for flow run {flow_run_id}, got {len(parents)}"
    return parents[0], {r.info.run_id for r in runs}


@pytest.mark.e2e
def test_worker_runs_the_scheduled_and_the_manual_deployment(tmp_path: Path) -> None:
    """`prefect deploy --all` + `prefect worker start`: a scheduled run promotes, a UI-form run is rejected, visibly.

    A real Prefect server, the process work pool, the project's prefect.yaml; both runs are started the way a user
    does (`prefect deployment run`, the manual one with the form's JSON) and executed by the worker in the project.
    """
    # latency is wall-clock on a CPU shared with the rest of the suite (p95 over 1 s seen at load 3.6 on 2 cores);
    # this test is about deployments, the latency gate has its own tests; one family keeps the two runs short
    params = small_params(evaluate={"gates": {"latency": {"enabled": False}}}, candidates={"families": ["lightgbm"]})
    root = make_project(tmp_path / "proj", params)
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick the runs up within 2 s, not the default 10
        "COLUMNS": "200",  # the CLI's tables in full, not cut to 80 columns
        "RETRAIN_ROOT": str(root),
    }
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = worker = None
    began = time.monotonic()
    seconds: dict[str, float] = {}
    # the form forces a rejection; it changes only evaluate's params, so the second run reuses the first's stages
    form = RunRequest(metric_min={"roc_auc": 0.999})
    try:
        server = spawn(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            tmp_path,
            {k: v for k, v in env.items() if k != "PREFECT_API_URL"},
            server_log,
        )
        wait_healthy(f"{api_url}/health", server, server_log, timeout=120)
        seconds["server"] = time.monotonic() - began
        t = time.monotonic()  # `make deploy`
        prefect_cli(["work-pool", "create", deploy.WORK_POOL, "--type", "process"], root, env)
        prefect_cli(["--no-prompt", "deploy", "--all"], root, env)
        listed = prefect_cli(["deployment", "ls"], root, env)
        seconds["deploy"] = time.monotonic() - t
        for name in (deploy.SCHEDULED, deploy.MANUAL):
            assert f"retrain/{name}" in listed, f"`prefect deployment ls` does not list {name}:\n{listed}"
        registered = asyncio.run(read_deployments(api_url))
        for d in registered:
            assert d["pull_steps"] == [{"flows.deploy.enter_project": {}}], f"{d['name']}: pull {d['pull_steps']}"
            assert str(tmp_path) not in json.dumps(d), f"{d['name']} stores an absolute path: {d}"

        worker = spawn([str(BIN / "prefect"), "worker", "start", "--pool", deploy.WORK_POOL], root, env, worker_log)
        scheduled_id = started_run_id(prefect_cli(["deployment", "run", f"retrain/{deploy.SCHEDULED}"], root, env))
        parameters = json.dumps({"request": form.model_dump(mode="json", exclude_defaults=True)})
        manual_id = started_run_id(
            prefect_cli(["deployment", "run", f"retrain/{deploy.MANUAL}", "--params", parameters], root, env)
        )
        t = time.monotonic()
        runs = asyncio.run(wait_final(api_url, [scheduled_id, manual_id], worker, worker_log, timeout=420))
        seconds["runs"] = time.monotonic() - t
        listed_runs = prefect_cli(["flow-run", "ls"], root, env)
        logs = {i: asyncio.run(flow_run_logs(api_url, i)) for i in runs}
        artifacts = {i: asyncio.run(outcome_artifacts(api_url, i)) for i in runs}
        seconds["total"] = time.monotonic() - began
    finally:
        stop(worker)
        stop(server)
    tail = worker_log.read_text()[-4000:]
    scheduled, manual = runs[scheduled_id], runs[manual_id]
    for run in (scheduled, manual):
        assert run.name in listed_runs, f"`prefect flow-run ls` does not list {run.name}:\n{listed_runs}"
        assert run.state.is_completed(), f"{run.name} ended {run.state.type}: {run.state.message}\n{tail}"
    assert manual.parameters["trigger"] == "ui" and scheduled.parameters["trigger"] == "schedule", "triggers"
    for run_id, lines in logs.items():  # our loggers reach the UI: engine.pipeline and evaluate in both runs
        for needle in ("stage ingest", "stage evaluate", "gate beats_baselines"):
            assert any(needle in line for line in lines), f"{needle!r} not in {run_id}'s Prefect logs: {lines[:30]}"
    trained = [line for lines in logs.values() for line in lines if "trial 1/2" in line]  # whichever ran first
    assert trained, f"no tuning progress line in either run's Prefect logs: {logs}"

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    parent, scheduled_runs = parent_run(client, root, scheduled_id)
    assert parent.data.tags["retrain.trigger"] == "schedule", f"trigger recorded as {parent.data.tags}"
    assert champion.run_id in scheduled_runs, "the champion was not trained by the scheduled run"
    parent, manual_runs = parent_run(client, root, manual_id)
    assert parent.data.tags["retrain.trigger"] == "ui", f"trigger recorded as {parent.data.tags}"
    expected = stable_hash(as_dict(load_params(root / "params.yaml", form.to_overrides())))
    assert parent.data.tags["retrain.params_hash"] == expected, "the run did not use the params with the form's values"
    assert champion.run_id not in manual_runs, "a rejected run must not move the champion"

    for run, name, word in ((scheduled, "Promoted", "promot"), (manual, "Rejected", "reject")):
        assert run.state.name == name, f"{run.name} ended in state {run.state.name!r}, expected {name!r}"
        found = artifacts[str(run.id)]
        assert len(found) == 1 and found[0].type == "markdown", f"{run.name}: {OUTCOME_ARTIFACT} artifacts {found}"
        assert word in str(found[0].data).lower(), f"{run.name}: the artifact does not state the decision"
    logger.info("seconds: %s", {k: round(v, 1) for k, v in seconds.items()})
