"""Every MLflow run the pipeline opens goes through adapters/mlflow_runs.py (owner tags, truthful end status)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adapters.mlflow_runs import end_status
from engine.codedeps import PACKAGES

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "adapters" / "mlflow_runs.py"
OPENERS = {"start_run", "create_run", "end_run"}
"""MLflow calls that open or end a run: a run opened elsewhere would carry no owner tags (recovery misses it)."""


def run_calls(source: str, where: str) -> list[str]:
    """`where:line name` of each method call named like a run opener (`mlflow.start_run`, `client.create_run`)."""
    return [
        f"{where}:{node.lineno} {node.func.attr}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in OPENERS
    ]


def test_no_module_but_the_helper_opens_an_mlflow_run() -> None:
    modules = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py")) if p != HELPER]
    calls = [call for path in modules for call in run_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert not calls, (
        "open MLflow runs with adapters/mlflow_runs.py `open_run` / `create_run` (owner tags for recovery, "
        "KILLED on a signal):\n  " + "\n  ".join(calls)
    )


def test_the_scan_reports_a_direct_call() -> None:
    source = "import mlflow\nwith mlflow.start_run():\n    pass\nclient.create_run('1')\nmlflow.end_run()\n"
    assert sorted(c.split()[-1] for c in run_calls(source, "probe")) == ["create_run", "end_run", "start_run"]


@pytest.mark.parametrize(
    ("exc", "status"),
    [(None, "FINISHED"), (ValueError("bad"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (SystemExit(1), "KILLED")],
)
def test_a_run_ends_with_the_status_of_how_its_block_left(exc: BaseException | None, status: str) -> None:
    assert end_status(exc) == status
