"""Prefect UI check: submit the retrain-manual form twice in headless Chromium; one run Promoted, one Rejected.

`make ui-check` runs this with the project's venv; the browser part re-runs this file as `browser` under the
separate `.venv-ui` (Playwright, from requirements-ui.lock), so Playwright never enters requirements.lock.
Everything happens in a throwaway project on a small sample with its own Prefect server on a free port:

  temp project -> `prefect server start` -> `make deploy` (work pool + `prefect deploy --all` from prefect.yaml)
  -> `prefect worker start --pool retrain-process` -> Chromium, for each of FORMS: Deployments > retrain-manual >
  Run > Custom run, fill the form, Submit -> wait for the end -> the run page's state badge names the decision
  (Promoted / Rejected) -> Artifacts tab -> `retrain-outcome` opens its Markdown (title, Gates, Decision)
  -> assert the runs' parameters, trigger=ui, and that only the promoted run's model is the MLflow champion.

Screenshots go to <checkout>/.retrain/ui-check/. Exit 0 when all holds, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

logger = logging.getLogger("retrain.ui_check")

CHECKOUT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEPLOYMENT = "retrain-manual"
WORK_POOL = "retrain-process"
FORM: dict[str, Any] = {"sample_rows": 2000, "n_trials": 3, "baseline_margin": 0.002, "metric_min": {"roc_auc": 0.8}}
"""What the browser types into the form (the project's own values differ: 2500 rows, 2 trials, roc_auc >= 0.85)."""
FORMS: list[tuple[str, dict[str, Any]]] = [
    ("Promoted", FORM),
    # the same values but an unreachable bound: only evaluate and promote re-run (the rest is cached)
    ("Rejected", {**FORM, "metric_min": {"roc_auc": 0.999}}),
]
"""The forms submitted, in order, with the final state's name each must show (flows/outcome.py)."""
ARTIFACT = "retrain-outcome"
"""The Markdown artifact every run leaves (flows/outcome.py ARTIFACT_KEY)."""


class CheckError(RuntimeError):
    """A step of the check did not hold; the message says which and why."""


# --------------------------------------------------------------------------------------------------- orchestration


def free_port() -> int:
    """A port nothing listens on right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST a JSON body to) the Prefect REST API, the same API the UI calls."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    """Seconds until the Prefect API answers /health; CheckError if the server dies or stays silent."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise CheckError(f"prefect server exited {process.returncode}; see {log}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url + "/health", timeout=2) as response,
        ):
            if response.status == 200:
                return time.monotonic() - began
        time.sleep(0.5)
    raise CheckError(f"prefect server not healthy after {timeout:.0f}s; see {log}")


def spawn(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a background process in its own process group (so stop() ends its children too)."""
    logger.info("start: %s (log %s)", " ".join(command), log)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes] | None, name: str, grace: float = 15.0) -> None:
    """SIGTERM the process group this script started, SIGKILL it after `grace` seconds."""
    if process is None:
        return
    began = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        logger.warning("%s ignored SIGTERM for %.0fs; SIGKILL", name, grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # children of the group that outlived their leader
        os.killpg(process.pid, signal.SIGKILL)
    logger.info("stopped %s in %.1fs", name, time.monotonic() - began)


def run_step(command: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    """Run a short command to completion; CheckError with its output when it fails."""
    logger.info("%s: %s", what, " ".join(command))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise CheckError(f"{what} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def make_sample_project(dest: Path) -> Path:
    """A throwaway git + DVC project with this checkout's code and data, on the test suite's small settings."""
    sys.path.insert(0, str(CHECKOUT))
    from tests.conftest import make_project, small_params

    # the latency gate is wall-clock, and this machine may be busy; it has its own tests. One family keeps the
    # two runs short: this checks the UI, the families have their own tests
    params = small_params(evaluate={"gates": {"latency": {"enabled": False}}}, candidates={"families": ["lightgbm"]})
    root = make_project(dest, params)
    shutil.copy2(CHECKOUT / "prefect.yaml", root / "prefect.yaml")  # what `prefect deploy --all` reads
    return root


def verify(root: Path, api_url: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run ended in its named state with its form's values, trigger=ui; the champion is the promoted one's."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from adapters.mlflow_store import default_tracking_uri
    from flows.training import RunRequest
    from retrain.config import load_params, stable_hash
    from retrain.config import params_dict as as_dict

    params = load_params(root / "params.yaml")
    client = MlflowClient(params.tracking.tracking_uri or default_tracking_uri(root))
    try:
        champion = client.get_model_version_by_alias(params.promote.model_name, params.promote.alias)
    except MlflowException as error:
        raise CheckError(f"no {params.promote.alias} alias on {params.promote.model_name}: {error}") from error
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    summaries = []
    for (expected, form), seen in zip(FORMS, runs, strict=True):
        flow_run_id = seen["flow_run_id"]
        run = api(api_url, f"/flow_runs/{flow_run_id}")
        if (run["state_type"], run["state_name"]) != ("COMPLETED", expected):
            raise CheckError(f"flow run {run['name']} ended {run['state_type']} {run['state_name']!r}, not {expected}")
        parameters = run["parameters"]
        if parameters.get("trigger") != "ui":
            raise CheckError(f"flow run parameters have trigger={parameters.get('trigger')!r}, expected 'ui'")
        request = RunRequest.model_validate(parameters.get("request", {}))
        typed = {name: getattr(request, name) for name in form}
        if typed != form:
            raise CheckError(f"the form's values did not reach the run: sent {form}, run has {typed}")
        mlflow_runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`retrain.prefect_flow_run_id` = '{flow_run_id}'"
        )
        parents = [r for r in mlflow_runs if "mlflow.parentRunId" not in r.data.tags]
        if len(parents) != 1:
            raise CheckError(f"expected one parent MLflow run tagged with flow run {flow_run_id}, found {len(parents)}")
        tags = parents[0].data.tags
        if tags.get("retrain.trigger") != "ui":
            raise CheckError(f"MLflow run {parents[0].info.run_id} has retrain.trigger={tags.get('retrain.trigger')!r}")
        expected_hash = stable_hash(as_dict(load_params(root / "params.yaml", request.to_overrides())))
        if tags.get("retrain.params_hash") != expected_hash:
            raise CheckError("the run's params hash is not that of params.yaml with the form's overrides")
        trained_champion = champion.run_id in {r.info.run_id for r in mlflow_runs}
        if trained_champion != (expected == "Promoted"):
            raise CheckError(
                f"{params.promote.alias} v{champion.version}: trained by {expected} run {run['name']}? "
                f"{trained_champion}"
            )
        summaries.append(
            {
                "state": run["state_name"],
                "flow_run": run["name"],
                "flow_run_id": flow_run_id,
                "mlflow_run": parents[0].info.run_id,
                "params_hash": expected_hash,
                "artifact_title": seen.get("artifact_title"),
            }
        )
    return summaries


def check(args: argparse.Namespace) -> dict[str, Any]:
    """The whole check; returns what it measured, raises CheckError with the failing step."""
    shots = args.shots.resolve()
    shots.mkdir(parents=True, exist_ok=True)
    for stale in shots.glob("*.png"):  # only this run's pictures, so an old error.png cannot mislead
        stale.unlink()
    work = Path(tempfile.mkdtemp(prefix="retrain-ui-check-"))
    logs = shots / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    timings: dict[str, float] = {}
    began = time.monotonic()
    server = worker = None
    passed = False
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    os.environ["PATH"] = env["PATH"]  # make_project calls git and dvc
    try:
        root = make_sample_project(work / "project")
        timings["project"] = time.monotonic() - began
        logger.info("sample project at %s (%.1fs)", root, timings["project"])

        port = args.port or free_port()
        api_url = f"http://{HOST}:{port}/api"
        server_env = {
            **env,
            "PREFECT_HOME": str(work / "prefect-server"),
            "PREFECT_UI_API_URL": api_url,
        }
        server_env.pop("PREFECT_API_URL", None)
        server = spawn(
            [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)],
            work,
            server_env,
            logs / "prefect-server.log",
        )
        timings["server_healthy"] = wait_healthy(api_url, server, logs / "prefect-server.log", args.timeout)
        logger.info("prefect server healthy at %s after %.1fs", api_url, timings["server_healthy"])

        client_env = {
            **env,
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(work / "prefect-client"),
            "RETRAIN_ROOT": str(root),  # the worker's checkout: prefect.yaml's pull step enters it
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # the worker picks a submitted run up within 2 s (default 10)
        }
        t = time.monotonic()  # `make deploy`: the work pool, then `prefect deploy --all` (prefect.yaml)
        run_step(
            [str(BIN / "prefect"), "work-pool", "create", WORK_POOL, "--type", "process"], root, client_env, "work pool"
        )
        run_step([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], root, client_env, "prefect deploy --all")
        timings["deploy"] = time.monotonic() - t
        worker = spawn(
            [str(BIN / "prefect"), "worker", "start", "--pool", WORK_POOL], root, client_env, logs / "worker.log"
        )

        t = time.monotonic()
        result_file = work / "browser.json"
        browser = [
            str(args.ui_python),
            str(Path(__file__).resolve()),
            "browser",
            "--ui",
            f"http://{HOST}:{port}",
            "--shots",
            str(shots),
            "--result",
            str(result_file),
            "--timeout",
            str(args.run_timeout),
        ]
        logger.info("browser: %s", " ".join(browser))
        try:
            done = subprocess.run(browser, env=env, timeout=args.run_timeout + 300)
        except subprocess.TimeoutExpired as error:
            raise CheckError(f"the browser step did not end within {error.timeout:.0f}s") from error
        timings["browser"] = time.monotonic() - t
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        if done.returncode != 0 or len(result.get("runs", [])) != len(FORMS):
            raise CheckError(f"browser step failed ({done.returncode}): {result.get('error', 'see its log above')}")
        timings.update(result.get("timings", {}))
        summary = {"runs": verify(root, api_url, result["runs"])}
        passed = True
    finally:
        stop(worker, "worker")
        stop(server, "prefect server")
        if passed and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:  # a failed check keeps the project (its mlflow.db, dvc.lock) and Prefect's database to look at
            logger.info("kept the sample project and Prefect state in %s", work)
    timings["total"] = time.monotonic() - began
    seconds = {k: round(v, 1) for k, v in timings.items()}
    return {**summary, "screenshots": result.get("screenshots", []), "seconds": seconds}


# --------------------------------------------------------------------------------------------------------- browser


def field(page: Any, label: str) -> Any:
    """The form property whose own label starts with `label` (not the enclosing `request` object)."""
    own_label = page.locator(":scope > .p-label__header .schema-form-property__label", has_text=re.compile(f"^{label}"))
    return page.locator("div.schema-form-property").filter(has=own_label)


def fill_form(page: Any, form: dict[str, Any]) -> None:
    """Type `form` into the request form: pick the non-null type of each optional field, then its value."""
    for label, name, kind in (
        ("Sample Rows", "sample_rows", "int"),
        ("N Trials", "n_trials", "int"),
        ("Baseline Margin", "baseline_margin", "float"),
    ):
        prop = field(page, label)
        prop.get_by_role("button", name=kind, exact=True).click()
        prop.locator("input").fill(str(form[name]))
        logger.info("form: %s = %s", label, form[name])
    prop = field(page, "Metric Min")  # dict[str, float]: a JSON editor
    prop.locator("textarea").fill(json.dumps(form["metric_min"]))
    logger.info("form: Metric Min = %s", json.dumps(form["metric_min"]))


def shot(page: Any, shots: Path, name: str, tall: bool = False) -> str:
    """Screenshot the page into `shots` (`tall`: the whole form or report in one picture); its path."""
    path = shots / f"{name}.png"
    if tall:
        page.set_viewport_size({"width": 1400, "height": 2400})
    page.screenshot(path=str(path))
    if tall:
        page.set_viewport_size({"width": 1400, "height": 1000})
    return str(path)


def submit_form(page: Any, ui: str, form: dict[str, Any], shots: Path, prefix: str) -> tuple[str, list[str]]:
    """Deployments -> retrain-manual -> Run -> Custom run, fill `form`, Submit, open the new run; its id, pictures."""
    page.goto(ui + "/deployments")
    page.get_by_text(DEPLOYMENT, exact=True).click()
    page.wait_for_url(re.compile(r"/deployments/deployment/"))
    deployment_id = page.url.split("/deployments/deployment/")[1].split("?")[0].split("/")[0]
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(r"/run\b"))
    field(page, "Sample Rows").get_by_role("button", name="int", exact=True).wait_for()
    fill_form(page, form)
    pictures = [shot(page, shots, f"{prefix}-1-form-filled", tall=True)]
    run_name = page.locator(".flow-run-name-input input").input_value()  # generated, e.g. "epsilon2-ando"
    submit = page.get_by_role("button", name="Submit", exact=True)
    for attempt in range(3):  # a click that lands while the form is still settling (a JSON field) can be lost
        submit.click()
        try:
            page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]{36}/?(\?.*)?$"), timeout=20_000)
            break
        except Exception:  # playwright's TimeoutError (the UI venv's package, not importable here)
            if attempt == 2:
                raise CheckError(f"the form did not submit after 3 clicks; still on {page.url}") from None
            logger.info("the form is still open after Submit: clicking it again")
    # the UI returns to the deployment page (a toast "<run> scheduled to start now", gone after a few seconds)
    # where the new run is listed by name: open it from there, as a person would. The list's default filter hides
    # Scheduled runs and the page fetched it before the worker picked the run up: reload, as a person would
    run_link = page.locator("a", has_text=re.compile(f"^{re.escape(run_name)}$")).first
    deadline = time.monotonic() + 180
    while True:
        try:
            run_link.wait_for(timeout=10_000)
            break
        except Exception:  # playwright's TimeoutError (the UI venv's package, not importable here)
            if time.monotonic() > deadline:
                raise
            logger.info("%s not listed yet (Scheduled runs are filtered out): reloading the deployment page", run_name)
            page.reload()
    pictures.append(shot(page, shots, f"{prefix}-2-submitted"))
    run_link.click()
    page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)  # type: ignore[union-attr]
    run = api(ui + "/api", f"/flow_runs/{flow_run_id}")
    if run["deployment_id"] != deployment_id:
        raise CheckError(f"{run_name} opened {flow_run_id}, not a run of {DEPLOYMENT}")
    logger.info("submitted: flow run %s (%s), its page is open", run["name"], flow_run_id)
    return flow_run_id, pictures


def wait_final(api_url: str, flow_run_id: str, timeout: float) -> dict[str, Any]:
    """Poll the API the UI reads until the flow run is final; the run."""
    began, state = time.monotonic(), None
    while True:
        run = api(api_url, f"/flow_runs/{flow_run_id}")
        if run["state_type"] != state:
            state = run["state_type"]
            logger.info("flow run %s: %s after %.0fs", run["name"], run["state_name"], time.monotonic() - began)
        if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return run
        if time.monotonic() - began > timeout:
            raise CheckError(f"flow run {flow_run_id} still {state} after {timeout:.0f}s")
        time.sleep(3)


def check_outcome_in_ui(page: Any, expected: str, shots: Path, prefix: str) -> tuple[str, list[str]]:
    """The open run page shows the state badge `expected`; its Artifacts tab opens `retrain-outcome`'s Markdown."""
    page.reload()
    badge = page.locator(".state-badge").first
    badge.wait_for()
    shown = badge.inner_text().strip()
    if shown != expected:
        raise CheckError(f"the flow run page's state badge says {shown!r}, expected {expected!r}")
    page.get_by_text("Logs", exact=True).first.wait_for()
    page.wait_for_timeout(2000)  # let the timeline and the first log lines render
    pictures = [shot(page, shots, f"{prefix}-3-run-final")]
    page.get_by_text("Artifacts", exact=True).first.click()
    card = page.locator("a", has_text=ARTIFACT).first  # the artifact card, a link to the artifact's page
    card.wait_for()
    pictures.append(shot(page, shots, f"{prefix}-4-artifacts-tab"))
    card.click()
    page.wait_for_url(re.compile(r"/artifacts/artifact/"))
    title = page.locator("h2", has_text=re.compile(f"^{expected}:")).first  # the report's headline: "<state>: <model>"
    title.wait_for()
    for heading in ("Gates", "Decision"):
        page.locator("h3", has_text=heading).first.wait_for()
    text = title.inner_text().strip()
    pictures.append(shot(page, shots, f"{prefix}-5-artifact", tall=True))
    logger.info("%s: badge %r, artifact %s shows %r", prefix, shown, ARTIFACT, text)
    return text, pictures


def drive(ui: str, shots: Path, timeout: float) -> dict[str, Any]:
    """For each of FORMS: submit it, wait for the run's end, check its state badge and artifact in the page."""
    from playwright.sync_api import sync_playwright

    timings: dict[str, float] = {}
    screenshots: list[str] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(60_000)
        page = context.new_page()
        try:
            for expected, form in FORMS:
                prefix = expected.lower()
                t = time.monotonic()
                flow_run_id, pictures = submit_form(page, ui, form, shots, prefix)
                screenshots += pictures
                timings[f"{prefix}_submit"] = time.monotonic() - t
                t = time.monotonic()
                run = wait_final(ui + "/api", flow_run_id, timeout)
                timings[f"{prefix}_run"] = time.monotonic() - t
                if run["state_type"] != "COMPLETED":
                    raise CheckError(f"flow run {run['name']} ended {run['state_type']}: {run['state'].get('message')}")
                t = time.monotonic()
                title, pictures = check_outcome_in_ui(page, expected, shots, prefix)
                screenshots += pictures
                timings[f"{prefix}_outcome_pages"] = time.monotonic() - t
                runs.append({"flow_run_id": flow_run_id, "state": run["state_name"], "artifact_title": title})
            return {"runs": runs, "timings": timings, "screenshots": screenshots}
        except Exception:
            with contextlib.suppress(Exception):
                screenshots.append(shot(page, shots, "error"))
                logger.error("page at failure: %s (screenshot %s)", page.url, shots / "error.png")
            raise
        finally:
            context.close()


# ------------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    """`python scripts/ui_check.py [--ui-python .venv-ui/bin/python]` (and its `browser` half, run under .venv-ui)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("check", "browser"), default="check")
    parser.add_argument(
        "--ui-python",
        type=Path,
        default=CHECKOUT / ".venv-ui" / "bin" / "python",
        help="python of the venv that has Playwright (requirements-ui.lock)",
    )
    parser.add_argument("--shots", type=Path, default=CHECKOUT / ".retrain" / "ui-check", help="screenshots and logs")
    parser.add_argument("--port", type=int, default=0, help="Prefect server port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for the server's health check")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="seconds for the flow run to finish")
    parser.add_argument("--keep", action="store_true", help="keep the temp project and Prefect state")
    parser.add_argument("--ui", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    log_format = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=log_format)
    if args.mode == "browser":
        try:
            result = drive(args.ui, args.shots, args.timeout)
        except Exception as error:  # report any browser failure to the orchestrator as a message, exit 1
            logger.error("browser step failed: %s", error)
            args.result.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
            return 1
        args.result.write_text(json.dumps(result))
        return 0
    if not Path(CHROMIUM).is_file():
        logger.error("%s is missing: apt-get install -y chromium (or run `make ui-check`)", CHROMIUM)
        return 1
    if not args.ui_python.is_file():
        logger.error("%s is missing: `make ui-check` builds .venv-ui from requirements-ui.lock", args.ui_python)
        return 1
    try:
        summary = check(args)
    except CheckError as error:
        logger.error("UI check FAILED: %s (logs and screenshots in %s)", error, args.shots)
        return 1
    logger.info("UI check passed: %s", json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
