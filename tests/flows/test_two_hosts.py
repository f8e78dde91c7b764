"""Two hosts, simulated on this machine: two workspaces (separate directories, each its own git + DVC repo and its
own copy of the code) share only network services — one MLflow server on PostgreSQL (proxied artifacts), one
Prefect server, one Dask scheduler whose workers run from a third directory, one Optuna database and one DVC
remote. Both retrain at once on different data versions; the families and their trials run on the Dask workers,
which cannot see either workspace at all (their mount namespace hides the hosts' folder), so nothing there may
depend on a path being the same everywhere. See docs/scaleout.md ("Two hosts").
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from retrain.catalog import SNAPSHOT
from tests.conftest import COPIED, REPO, gates_off, make_project, small_params
from tests.servers import SERVERS_SCRIPT, free_port, servers_script

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
MODEL = small_params()["promote"]["model_name"]
FAMILIES = ["lightgbm", "logreg"]
TRIALS = 4
TIMEOUT = 240  # seconds per server health check (MLflow's first start on PostgreSQL migrates its schema)
RUN_TIMEOUT = 900


@dataclass(frozen=True)
class Services:
    """The network services both hosts share, and where the third directory's Dask workers run."""

    base: Path
    mlflow: str
    prefect_api: str
    optuna: str
    dask: str
    remote: Path
    hosts: Path
    workers: Path


def clean_env() -> dict[str, str]:
    """This environment without Prefect/MLflow/Dask settings the suite carries (its own test API, say)."""
    dropped = ("PREFECT_", "MLFLOW_", "DASK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped) and k not in ("RETRAIN_ROOT", "SERVERS")}
    return env | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def copy_code(dest: Path) -> Path:
    """The project's code alone (what a worker host installs), in a directory of its own."""
    for rel in COPIED:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def hidden_hosts_prefix(hosts: Path) -> list[str]:
    """Run a command in a mount namespace where the hosts' folder is an empty tmpfs: it cannot read a workspace."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.fail(
            "the two-host test hides the workspaces from the Dask workers with `unshare -m` (util-linux) as root; "
            f"unshare: {unshare}, uid {os.geteuid()}",
            pytrace=False,
        )
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount -t tmpfs none "{hosts}" && exec "$@"',
        "-",
    ]


def start_process(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, stdout: Path | None = None
) -> subprocess.Popen:
    """A long-running process in its own session, its stderr (and stdout, unless `stdout` is given) in `log`."""
    with log.open("w") as err, (stdout or log).open("a") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM its group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


def dask_workers_up(address: str, count: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """Wait until the scheduler sees `count` workers."""
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        deadline = time.monotonic() + timeout
        while len(client.scheduler_info()["workers"]) < count:
            assert proc.poll() is None, f"the Dask workers exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{count} Dask workers not up in {timeout} s:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.5)


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    """PostgreSQL + MLflow on it + Prefect (scripts/servers.py), and a Dask scheduler with 2 workers started from a
    third directory inside a mount namespace that hides the hosts' folder; all on 127.0.0.1, stopped at the end."""
    base = Path(tempfile.mkdtemp(prefix="retrain-two-hosts-"))
    base.chmod(0o755)  # the postgres OS user enters the services' folder
    hosts, workers, services_root = base / "hosts", base / "workers", base / "services"
    for folder in (hosts, workers, services_root):
        folder.mkdir()
        folder.chmod(0o755)
    ports = {f"{name}_port": free_port() for name in ("prefect", "mlflow", "pg", "dask")}
    cfg = servers_script().Config(services_root, **ports)  # the URLs `make servers` prints
    script = [sys.executable, str(SERVERS_SCRIPT)]
    where = ["--root", str(services_root)]
    start = [
        *["start", *where, "--only", "postgres,mlflow,prefect", "--mlflow-backend", "postgres"],
        *["--prefect-port", str(cfg.prefect_port), "--mlflow-port", str(cfg.mlflow_port)],
        *["--pg-port", str(cfg.pg_port), "--timeout", str(TIMEOUT)],
    ]
    processes: list[subprocess.Popen] = []
    try:
        done = subprocess.run([*script, *start], capture_output=True, text=True, env=clean_env(), timeout=900)
        assert done.returncode == 0, f"servers.py start failed:\n{done.stderr[-4000:]}"
        code = copy_code(workers / "code")
        env = clean_env() | {"PYTHONPATH": str(code), "PREFECT_HOME": str(workers / "prefect")}
        address = cfg.dask_address
        scheduler = [str(BIN / "dask"), "scheduler", "--host", cfg.host, "--port", str(cfg.dask_port)]
        processes.append(start_process([*scheduler, "--no-dashboard"], workers, env, workers / "scheduler.log"))
        worker = [str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"]
        worker += ["--local-directory", str(workers / "space")]
        log = workers / "workers.log"
        processes.append(start_process([*hidden_hosts_prefix(hosts), *worker], code, env, log))
        dask_workers_up(address, 2, TIMEOUT, processes[-1], log)
        yield Services(
            base=base,
            mlflow=cfg.mlflow_url,
            prefect_api=cfg.prefect_api,
            optuna=cfg.pg_url("optuna"),
            dask=address,
            remote=base / "remote",
            hosts=hosts,
            workers=workers,
        )
    finally:
        for proc in reversed(processes):
            stop_process(proc)
        subprocess.run([*script, "stop", *where], capture_output=True, text=True, env=clean_env(), timeout=300)
        shutil.rmtree(base, ignore_errors=True)


def workspace(services: Services, name: str, sample_rows: int) -> Path:
    """One host's project: its own clone of the code and data, params pointing at the shared services."""
    params = small_params(
        ingest={"sample_rows": sample_rows},
        tracking={"tracking_uri": services.mlflow},
        runner={"task_runner": "dask", "dask_address": services.dask},
        candidates={
            "families": FAMILIES,
            "n_trials": TRIALS,
            "parallel_trials": 2,
            "storage": services.optuna,
            "logreg": {"n_trials": TRIALS},
        },
        # the gates that compare the two hosts' models stay on (metric_bounds, beats_baselines, no_regression vs
        # the champion); the rest have their own tests and cost ~5 s of evaluate per host: off
        evaluate=gates_off(),
    )
    root = make_project(services.hosts / name, params)
    subprocess.run(["dvc", "remote", "add", "-d", "-f", "shared", str(services.remote)], cwd=root, check=True)
    return root


def host_env(services: Services, root: Path) -> dict[str, str]:
    """A host's environment: its workspace, its own code first on the path, the shared Prefect server."""
    return clean_env() | {
        "RETRAIN_ROOT": str(root),
        "PYTHONPATH": str(root),
        "PREFECT_HOME": str(root.parent / f"{root.name}-prefect"),
        "PREFECT_API_URL": services.prefect_api,
        "RETRAIN_LOCK_TIMEOUT": "600",
    }


def api(url: str, body: dict | None = None) -> object:
    """A Prefect API answer (GET, or POST with a JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_two_hosts_share_servers_workers_and_a_remote(services: Services) -> None:
    import optuna
    from distributed import Client
    from mlflow.tracking import MlflowClient

    from adapters import mlflow_audit

    roots = {"a": workspace(services, "a", 2500), "b": workspace(services, "b", 3000)}
    procs = {
        name: start_process(
            [str(BIN / "retrain"), "run", "-v", "--json"],
            root,
            host_env(services, root),
            root.parent / f"{name}.log",
            stdout=root.parent / f"{name}.json",
        )
        for name, root in roots.items()
    }
    try:
        codes = {name: proc.wait(timeout=RUN_TIMEOUT) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop_process(proc)
    logs = {name: (roots[name].parent / f"{name}.log").read_text() for name in roots}
    for name, code in codes.items():
        assert code in (0, 3), f"host {name} exited {code}:\n{logs[name][-8000:]}"
    summaries = {name: json.loads((roots[name].parent / f"{name}.json").read_text()) for name in roots}

    # the workers ran in the third directory and could not see a workspace
    with Client(services.dask) as client:
        pids = set(client.run(os.getpid).values())
        seen = set(client.run(os.path.exists, str(services.hosts / "a" / "params.yaml")).values())
    assert seen == {False}, "the Dask workers can see a workspace: the test would not show path independence"

    # families and trials ran on the workers, through the shared Optuna database
    storage = optuna.storages.RDBStorage(services.optuna)
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    for name, summary in summaries.items():
        assert summary["stages"], summary
        ran = {s["name"] for s in summary["stages"] if s["status"] == "ran"}
        assert "candidates" in ran, f"host {name}: candidates did not run: {summary['stages']}"
    by_family: dict[str, set[int]] = {f: set() for f in FAMILIES}
    for study_name in studies:
        family = study_name.split("-")[0]
        trials = optuna.load_study(study_name=study_name, storage=storage).trials
        ran_on = {int(t.user_attrs["ran_on"].rpartition(":")[2]) for t in trials if "ran_on" in t.user_attrs}
        assert ran_on and ran_on <= pids, f"study {study_name}'s trials ran outside the Dask workers: {ran_on}"
        by_family[family] |= ran_on
    assert len(studies) == 2 * len(FAMILIES), f"one study per family and host: {sorted(studies)}"
    # a loop joins late when the others are fast (a logreg trial is ~0.1 s): LightGBM's trials always spread
    assert by_family["lightgbm"] == pids, f"LightGBM's trial loops ran on both workers: {by_family}"

    # both runs recorded: MLflow (on PostgreSQL, through the server) and Prefect (one server)
    client = MlflowClient(services.mlflow)
    for name, summary in summaries.items():
        parent = client.get_run(summary["mlflow_run_id"])
        assert parent.info.status == "FINISHED", f"host {name}'s MLflow run is {parent.info.status}"
        flow_run = api(f"{services.prefect_api}/flow_runs/{summary['prefect_flow_run_id']}")
        assert flow_run["state_type"] == "COMPLETED", f"host {name}'s flow run is {flow_run['state_type']}"
        tasks = api(
            f"{services.prefect_api}/task_runs/filter",
            {"flow_runs": {"id": {"any_": [summary["prefect_flow_run_id"]]}}, "limit": 50, "sort": "ID_DESC"},
        )
        names = {t["name"] for t in tasks if t["state_type"] == "COMPLETED"}
        assert {f"candidates/{f}" for f in FAMILIES} <= names, f"host {name}: family task runs {sorted(names)}"

    # the better candidate is champion: promotions took the cross-host lock (a Prefect concurrency slot)
    champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    versions = {name: s["model_version"] for name, s in summaries.items()}
    winners = [name for name, version in versions.items() if version == champion]
    assert winners, f"champion v{champion} is neither host's model: {versions}"
    chain = [e for e in mlflow_audit.entries(services.mlflow, MODEL) if e["alias"] == "champion"]
    for before, after in itertools.pairwise(chain):
        assert after["from_version"] == before["to_version"], f"champion audit chain broken: {before} -> {after}"
    assert chain and chain[-1]["to_version"] == champion, f"the last champion move is the alias: {chain}"
    [winner] = winners
    for loser in set(roots) - {winner}:
        moved_from = {e["from_version"] for e in chain}
        assert summaries[loser]["decision"] == "reject" or versions[loser] in moved_from, (
            f"host {loser} was neither rejected nor replaced by a better champion: {summaries[loser]['decision']}, "
            f"audit {chain}"
        )
    from adapters.registry_lock import limit_name

    limit = api(f"{services.prefect_api}/v2/concurrency_limits/{limit_name(MODEL)}")
    assert limit["limit"] == 1 and limit["active_slots"] == 0, f"the cross-host registry lock, released: {limit}"

    # each version's data restores from the shared remote in the other workspace
    for here, there in (("a", "b"), ("b", "a")):
        version = versions[there]
        if version is None:
            continue
        dest = roots[here].parent / f"{here}-restores-{there}"
        done = subprocess.run(
            [str(BIN / "retrain"), "data", "restore", f"{MODEL}/{version}", str(dest)],
            cwd=roots[here],
            env=host_env(services, roots[here]),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{here} restoring {there}'s v{version}: {done.stderr[-3000:]}"
        restored = pd.read_parquet(dest / "snapshot.parquet")
        own = pd.read_parquet(roots[there] / SNAPSHOT)  # the data version the other host trained on
        pd.testing.assert_frame_equal(restored, own, obj=f"{there}'s v{version} restored in {here}")
        assert len(restored) != len(pd.read_parquet(roots[here] / SNAPSHOT)), "the two hosts had different data"
    logger.info("two hosts: versions %s, champion v%s, worker pids %s", versions, champion, sorted(pids))
