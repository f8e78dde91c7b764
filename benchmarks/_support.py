"""What the tuning and inference benchmarks add to benchmarks/_runs.py: driving the `retrain` CLI in a temp project.

Temp projects, machine facts, logging and result files come from `_runs` (shared by every benchmark).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from benchmarks._runs import project_env

logger = logging.getLogger("benchmarks")


def retrain_cli(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `retrain <args>` in the temp project (stderr kept for the error message)."""
    command = [str(project / ".venv" / "bin" / "retrain"), *args]
    logger.info("%s: retrain %s", project, " ".join(args))
    done = subprocess.run(command, cwd=project, env=project_env(project), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"retrain {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}")
    return done


def retrain_stages(project: Path, stages: list[str], *args: str) -> None:
    """Run several `retrain stage <name> <args>` in one interpreter (each CLI start costs seconds of imports)."""
    script = (
        "import sys\nfrom flows.cli import main\n"
        f"for stage in {stages!r}:\n"
        f"    code = main(['stage', stage, *{list(args)!r}])\n"
        "    if code:\n        sys.exit(code)\n"
    )
    logger.info("%s: retrain stage %s %s", project, " -> ".join(stages), " ".join(args))
    python = str(project / ".venv" / "bin" / "python")
    done = subprocess.run([python, "-c", script], cwd=project, env=project_env(project), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"retrain stage {stages} exited {done.returncode}: {done.stderr[-3000:]}")
