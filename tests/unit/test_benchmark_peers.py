"""The tuning benchmark's peer plumbing, in the main venv: no AutoGluon, no measurement (benchmarks measure)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import peers_autogluon, tuning


def _cell(dataset: str, budget: float, **tests: float) -> dict:
    """A measured cell as benchmarks.tuning stores it, with the given test scores per tool."""
    cell: dict = {"dataset": dataset, "budget": budget, "repeat": 0, "load": [1.0, 2.5]}
    for tool, test in tests.items():
        cell[tool] = {"test": test, "wall_seconds": budget, "trials": 3}
    return cell


def test_runner_arguments_parse_and_refuse_a_bad_budget() -> None:
    """The runner's command line is what tuning.run_autogluon passes; a zero budget is refused, naming it."""
    base = ["--train", "t.parquet", "--test", "x.parquet", "--label", "income", "--problem-type", "binary"]
    args = peers_autogluon.parse_args([*base, "--metric", "roc_auc", "--time-limit", "30", "--out", "s.parquet"])
    assert (args.models, args.time_limit, args.seed) == ("all", 30.0, 0)
    with pytest.raises(SystemExit):
        peers_autogluon.parse_args([*base, "--metric", "roc_auc", "--time-limit", "0", "--out", "s.parquet"])


def test_summary_names_the_peer_that_beats_ours_and_tolerates_a_failed_one() -> None:
    """Every cell is reported: a peer above ours turns the row into a MISS naming it; a failed peer shows '-'."""
    cells = [
        _cell("adult", 30.0, ours=0.930, flaml=0.926, ag_medium=0.931, ag_gbm=0.929),
        _cell("adult", 90.0, ours=0.931, flaml=0.926, ag_gbm=0.929),
    ]
    cells[1]["ag_medium"] = {"error": "exited 1"}
    rows, text = tuning.summarise(cells, {"adult": "roc_auc"})
    by_budget = {row["budget"]: row for row in rows}
    assert by_budget[30.0]["beaten_by"] == ["ag_medium"] and not by_budget[30.0]["passed"], rows
    assert by_budget[90.0]["passed"] and by_budget[90.0]["ag_medium"] is None, rows
    assert "MISS (AG medium)" in text and "| 1.0-2.5 |" in text, text


def test_without_the_peers_env_only_ours_and_flaml_run(tmp_path: Path) -> None:
    """No .venv-peers: the benchmark still runs (ours and FLAML), it does not fail."""
    args = argparse.Namespace(tools=None, no_autogluon=False, peers_python=tmp_path / "missing" / "python")
    assert tuning.tools_to_run(args) == ["ours", "flaml"]
    args.peers_python = Path(__file__)  # any existing file stands for the interpreter
    assert tuning.tools_to_run(args) == ["ours", "flaml", "ag_medium", "ag_gbm"]
