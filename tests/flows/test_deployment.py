"""Deployments: the typed request form, prefect.yaml as Prefect loads it, and a UI-style run on a real server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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

logger = logging.getLogger(__name__)
BIN = Path(sys.executable).parent
MODEL = "adult-income"


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


def test_prefect_yaml_loads_with_prefect_and_matches_serve() -> None:
    """prefect.yaml passes Prefect's own `prefect deploy` model, and declares what `retrain serve` serves."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.flows import load_flow_from_entrypoint

    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    configs = {d.name: d.model_dump(exclude_unset=True, mode="json") for d in model.deployments}
    assert set(configs) == {deploy.SCHEDULED, deploy.MANUAL}, f"deployments: {sorted(configs)}"
    for config in configs.values():
        assert config["work_pool"]["name"] == deploy.WORK_POOL, f"{config['name']}: wrong work pool"
        flow = load_flow_from_entrypoint(str(REPO / config["entrypoint"]))
        assert flow.name == retrain_flow.name, f"{config['entrypoint']} is not the training flow"
        flow.validate_parameters(config["parameters"])  # the fixed parameters fit the typed signature
    served = {d["name"]: d for d in deploy.describe()}
    for name, config in configs.items():
        schedules = [_schedule_config_to_deployment_schedule(s)["schedule"] for s in config.get("schedules", [])]
        yaml_schedules = [s.model_dump(mode="json") for s in schedules]
        assert yaml_schedules == served[name]["schedules"], f"{name}: prefect.yaml and flows/deploy.py schedules differ"
        assert config["parameters"] == served[name]["parameters"], f"{name}: parameters differ from retrain serve"
        assert config["work_pool"]["job_variables"] == served[name]["job_variables"], f"{name}: job variables differ"
    assert configs[deploy.SCHEDULED]["parameters"]["trigger"] == "schedule", "cron runs must record trigger=schedule"
    assert configs[deploy.MANUAL]["parameters"]["trigger"] == "ui", "UI runs must record trigger=ui"
    assert served[deploy.SCHEDULED]["schedules"][0]["cron"] == "0 3 * * 1", "default schedule is weekly"


def free_port() -> int:
    """A port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll a health URL until it answers 200; fail with the server's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


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


async def run_from_deployment(
    api_url: str, parameters: dict[str, Any], serve: subprocess.Popen, log: Path, timeout: float
) -> Any:
    """What the UI's "Run" button does: create a flow run of the manual deployment, then wait for its end state."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            while True:
                assert serve.poll() is None, f"retrain serve exited {serve.returncode}:\n{log.read_text()[-3000:]}"
                try:
                    deployment = await client.read_deployment_by_name(f"retrain/{deploy.MANUAL}")
                    break
                except ObjectNotFound:
                    assert time.monotonic() < deadline, f"deployment never registered:\n{log.read_text()[-3000:]}"
                    await asyncio.sleep(1)
            run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            while not (run.state and run.state.is_final()):
                assert time.monotonic() < deadline, f"flow run not done in {timeout}s:\n{log.read_text()[-3000:]}"
                await asyncio.sleep(2)
                run = await client.read_flow_run(run.id)
            return run


async def flow_run_logs(api_url: str, flow_run_id: Any) -> list[str]:
    """The flow run's log lines as the Prefect UI shows them (read from the server, page by page)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    lines: list[str] = []
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            while True:  # offset explicit: the pinned server (fastapi 0.154) rejects the client's null with 422
                page = await client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                    limit=200,
                    offset=len(lines),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                lines += [f"{log.name}: {log.message}" for log in page]
                if len(page) < 200:
                    return lines


@pytest.mark.e2e
def test_ui_run_from_the_manual_deployment_completes_and_promotes(tmp_path: Path) -> None:
    """A real Prefect server, `retrain serve`, and a run created through the API with a form override."""
    # latency is wall-clock on a CPU shared with the rest of the suite (p95 over 1 s seen at load 3.6 on 2 cores);
    # this test is about deployments, the latency gate has its own tests
    root = make_project(tmp_path / "proj", small_params(evaluate={"gates": {"latency": {"enabled": False}}}))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RETRAIN_ROOT": str(root),
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = serve = None
    began = time.monotonic()
    try:
        server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        with server_log.open("wb") as out:
            server = subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(f"{api_url}/health", server, server_log, timeout=120)
        server_seconds = time.monotonic() - began
        with serve_log.open("wb") as out:
            serve = subprocess.Popen(
                [str(BIN / "retrain"), "serve", "--only", deploy.MANUAL],
                env=env,
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        request = RunRequest(sample_rows=2400)  # differs from the project's 2500: the override must reach the run
        parameters = {"request": request.model_dump(mode="json")}  # the form replaces the request, not the trigger
        run = asyncio.run(run_from_deployment(api_url, parameters, serve, serve_log, timeout=240))
        log_tail = serve_log.read_text()[-4000:]
        assert run.state.is_completed(), f"flow run ended {run.state.type}: {run.state.message}\n{log_tail}"
        ui_logs = asyncio.run(flow_run_logs(api_url, run.id))
    finally:
        stop(serve)
        stop(server)
    for needle in (
        "stage ingest",
        "trial 1/2",
        "gate beats_baselines",
    ):  # engine.pipeline, retrain.models.tuning, evaluate
        assert any(needle in line for line in ui_logs), f"{needle!r} not in the flow run's Prefect logs: {ui_logs[:20]}"
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    runs = client.search_runs(
        [client.get_experiment_by_name(load_params(root / "params.yaml").tracking.experiment).experiment_id],
        filter_string=f"tags.`retrain.prefect_flow_run_id` = '{run.id}'",
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"expected one parent MLflow run for flow run {run.id}, got {len(parents)}"
    tags = parents[0].data.tags
    assert tags["retrain.trigger"] == "ui", f"trigger recorded as {tags.get('retrain.trigger')}"
    expected = stable_hash(as_dict(load_params(root / "params.yaml", request.to_overrides())))
    assert tags["retrain.params_hash"] == expected, "the run did not use the params with the form's override"
    assert champion.run_id in {r.info.run_id for r in runs}, "the champion was not trained by this UI-started run"
    logger.info("server healthy in %.1fs, whole test %.1fs", server_seconds, time.monotonic() - began)


def test_registered_deployments_run_in_this_checkout() -> None:
    """`make deploy` deployments pull to the project root (absolute), so a worker started anywhere finds it."""
    from prefect.flows import Flow

    flow = retrain_flow.from_source(source=str(REPO), entrypoint=deploy.ENTRYPOINT)
    assert isinstance(flow, Flow) and flow.name == retrain_flow.name, "entrypoint is not the training flow"
    for d in deploy.deployments(flow=flow):
        step = d.storage.to_pull_step()
        assert step == {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}, (
            f"{d.name}: pull step {step}"
        )
        assert d.entrypoint == deploy.ENTRYPOINT, f"{d.name}: entrypoint {d.entrypoint}"
