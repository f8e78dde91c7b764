"""Helpers of the stages and caching benchmarks: temp projects, machine facts, monitored runs, result files.

A monitored run timestamps each stderr line as it arrives and samples the RSS of the whole process tree, so
per-stage wall time and peak memory come from the `stage NAME ran|cached S.SSs` lines the flow logs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VENV_BIN = ROOT / ".venv" / "bin"
PACKAGES = (
    "prefect",
    "mlflow",
    "dvc",
    "great-expectations",
    "lightgbm",
    "optuna",
    "scikit-learn",
    "pandas",
    "numpy",
    "pyarrow",
    "flaml",
)
STAGE_LINE = re.compile(r"stage (\w+)\s+(ran|cached)\s+([\d.]+)s")
"""The line engine/pipeline.py logs at the end of each stage (the plain path of benchmarks/stages.py logs it too)."""


def setup_logging() -> None:
    """INFO lines on stderr for the benchmark's own progress; the noisy libraries only warn."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "prefect", "httpx", "dvc", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def git_commit(root: Path = ROOT) -> str:
    """The checkout's HEAD (what the temp clones measure), with `+dirty` when tracked files differ."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gb() -> float:
    """Physical memory in GB (MemTotal of /proc/meminfo)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, RAM, load, Python, key package versions, commit, date."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = pkg_version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gb": ram_gb(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": pinned_commit(),
        "checkout_commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def load_note(load: float, cpus: int | None) -> str:
    """How far to trust absolute times, from the 1-minute load average: the machine may be shared."""
    cpus = cpus or 1
    if load <= cpus / 2:
        return f"load average {load:.1f} on {cpus} CPUs: a quiet machine, absolute times are representative"
    return (
        f"load average {load:.1f} on {cpus} CPUs: other jobs shared the machine, so absolute times are inflated "
        "and ratios from side-by-side runs are what holds"
    )


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown line naming the machine, commit and date."""
    return (
        f"{info['cpu_count']} x {info['cpu_model']}, {info['ram_gb']} GB RAM, Python {info['python']}; "
        f"commit `{str(info['git_commit'])[:12]}`; {info['date']}"
    )


PIN_ENV = "BENCH_COMMIT"
"""The commit every temp project checks out: set by benchmarks/run.py for all benchmarks, else HEAD at start."""


def pinned_commit() -> str:
    """The commit measured: $BENCH_COMMIT, else the checkout's HEAD when first asked (then fixed for the process).

    Others commit to the checkout while a benchmark runs; pinning keeps every repeat on the same code.
    """
    if not os.environ.get(PIN_ENV):
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        os.environ[PIN_ENV] = head.stdout.strip()
    return os.environ[PIN_ENV]


def temp_project(prefix: str, parent: Path | None = None) -> Path:
    """A fresh clone of the pinned commit with the checkout's .venv linked in (a user's fresh clone)."""
    base = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-", dir=parent))
    project = base / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    subprocess.run(["git", "checkout", "--quiet", pinned_commit()], cwd=project, check=True)
    (project / ".venv").symlink_to(ROOT / ".venv")
    return project


def remove_project(project: Path) -> None:
    """Delete a temp project (its clone, stores and caches)."""
    shutil.rmtree(project.parent, ignore_errors=True)


_PREFECT_TEMPLATE: list[Path] = []
_TEMPLATE_LOCK = threading.Lock()
PREFECT_STARTUP_TIMEOUT = "600"
"""Seconds Prefect waits for its ephemeral server (default 20; at load 20 on 2 cores even 180 failed)."""


def prefect_home_template() -> Path:
    """A Prefect home whose database exists (created once per benchmark process by a one-task flow, not timed).

    Each temp project gets a copy: its runs start Prefect's ephemeral server on an empty, already created
    database (what a user has after the first run ever) instead of creating the schema under the clock.
    """
    with _TEMPLATE_LOCK:
        if not _PREFECT_TEMPLATE:
            _PREFECT_TEMPLATE.append(_new_prefect_home())
        return _PREFECT_TEMPLATE[0]


def _new_prefect_home() -> Path:
    """Create a Prefect home and its database by running a one-task flow in it."""
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": PREFECT_STARTUP_TIMEOUT}
    code = "from prefect import flow\n@flow\ndef warm() -> int:\n    return 1\nwarm()\n"
    subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, check=True, capture_output=True, timeout=600)
    return home


def project_env(project: Path) -> dict[str, str]:
    """Environment of a command run in a temp project: its code first on the path, its own Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RETRAIN_", "DVC_"))}
    env["PYTHONPATH"] = str(project)
    env["PATH"] = f"{project / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    home = project.parent / "prefect_home"
    if not home.exists():
        shutil.copytree(prefect_home_template(), home)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = PREFECT_STARTUP_TIMEOUT
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


@dataclass
class Monitored:
    """A finished command: wall seconds, exit code, output, stderr lines with arrival times, RSS samples."""

    command: list[str]
    returncode: int
    wall: float
    stdout: str
    stderr_lines: list[tuple[float, str]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, MB of the process tree's RSS)."""
    cpu_seconds: float | None = None
    """User + system CPU seconds of the process and the children it waited for (wait4): robust to machine load."""

    @property
    def stderr(self) -> str:
        """The whole stderr."""
        return "\n".join(line for _, line in self.stderr_lines)

    @property
    def peak_rss_mb(self) -> float:
        """Highest sampled RSS of the process tree."""
        return max((mb for _, mb in self.rss), default=float("nan"))

    def stage_windows(self) -> list[dict[str, Any]]:
        """Per stage (from the `stage NAME ran|cached S.SSs` lines): status, seconds, and peak RSS in its window."""
        out = []
        for at, line in self.stderr_lines:
            match = STAGE_LINE.search(line)
            if match is None:
                continue
            seconds = float(match.group(3))
            window = [mb for t, mb in self.rss if at - seconds - 0.3 <= t <= at + 0.05]
            out.append(
                {
                    "name": match.group(1),
                    "status": match.group(2),
                    "seconds": seconds,
                    "peak_rss_mb": round(max(window), 1) if window else None,
                }
            )
        return out


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB (0 once it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def run_monitored(
    command: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    *,
    interval: float = 0.2,
    timeout: float = 3600,
    check: bool = True,
    ok_codes: Sequence[int] = (0,),
) -> Monitored:
    """Run a command, timestamp each stderr line as it arrives, sample the process tree's RSS every `interval` s."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    lines: list[tuple[float, str]] = []
    rss: list[tuple[float, float]] = []
    out: list[str] = []

    def read_stderr() -> None:
        """Collect stderr lines with the time they arrived."""
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))

    def read_stdout() -> None:
        """Collect stdout."""
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    for reader in readers:
        reader.start()
    cpu: float | None = None
    while True:
        pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps like poll(), and gives the CPU time
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
            cpu = usage.ru_utime + usage.ru_stime
            break
        rss.append((time.perf_counter() - started, tree_rss_mb(proc.pid)))
        if time.perf_counter() - started > timeout:
            proc.kill()
        time.sleep(interval)
    wall = time.perf_counter() - started
    for reader in readers:
        reader.join(timeout=10)
    result = Monitored(list(command), proc.returncode, wall, "".join(out), lines, rss, cpu)
    if check and proc.returncode not in ok_codes:
        tail = "\n".join(line for _, line in lines[-30:])
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode} in {cwd}:\n{tail}")
    return result


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    clean = [float(v) for v in values if v is not None]
    return statistics.median(clean) if clean else float("nan")


def status(value: float, target: float, lower_is_better: bool = True) -> str:
    """PASS / MISS against a target."""
    if value != value:  # NaN
        return "n/a"
    ok = value <= target if lower_is_better else value >= target
    return "PASS" if ok else "MISS"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/<name>.json (raw numbers) and <name>.md (the section); the Markdown also to stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    sys.stdout.write(markdown.rstrip() + "\n")
    logger.info("wrote %s and %s", RESULTS / f"{name}.json", RESULTS / f"{name}.md")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def background_server(
    command: list[str], cwd: Path, env: dict[str, str], log_path: Path, health_url: str, timeout: float = 300.0
) -> Iterator[float]:
    """Run a server in its own process group until the block ends; yields the seconds it took to answer health.

    Fails with the tail of its log if it exits or does not answer 200 within `timeout`; on exit the group gets
    SIGTERM, then SIGKILL if it lingers.
    """
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"{command[0]} exited {server.returncode}: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(health_url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{health_url} did not answer in {timeout:g} s: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield time.monotonic() - started
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
