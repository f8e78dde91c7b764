"""The MLflow links a run prints point at the configured UI: `tracking.ui_url`, the tracking server, the
environment, or the port of the UI `make servers` started; never a guessed port presented as running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.mlflow_links import SERVERS_STATE, UI_ENV, ui_base
from adapters.mlflow_parent import headline_metrics, key_params, outcome_tags, redact
from flows.cli import link_lines
from retrain.config import load_params

REPO = Path(__file__).resolve().parents[2]
SQLITE = "sqlite:///mlflow.db"


def summary_for(base: str, known: bool, **extra: object) -> dict:
    return {
        "tracking_uri": SQLITE,
        "mlflow_run_id": "r1",
        "mlflow_experiment_id": "7",
        "mlflow_ui_url": base,
        "mlflow_ui_known": known,
        **extra,
    }


def servers_pid_file(root: Path, port: int) -> None:
    """What scripts/servers.py writes for the MLflow UI it started."""
    state = root / SERVERS_STATE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pid": 1, "port": port, "command": ["mlflow", "server"]}))


@pytest.fixture(autouse=True)
def no_ui_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UI_ENV, raising=False)


def test_the_port_of_the_ui_make_servers_started_is_used(tmp_path: Path) -> None:
    servers_pid_file(tmp_path, 5123)
    base, known = ui_base(SQLITE, None, tmp_path)
    assert (base, known) == ("http://127.0.0.1:5123", True)
    [line] = link_lines(summary_for(base, known))
    assert line == "mlflow run:   http://127.0.0.1:5123/#/experiments/7/runs/r1", line


def test_configured_ui_url_wins_over_env_and_pid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers_pid_file(tmp_path, 5123)
    monkeypatch.setenv(UI_ENV, "http://env-host:6000")
    assert ui_base(SQLITE, "https://mlflow.example.org/", tmp_path) == ("https://mlflow.example.org", True)
    assert ui_base(SQLITE, None, tmp_path) == ("http://env-host:6000", True), "env before the pid file"
    assert ui_base("http://10.0.0.5:5001", None, tmp_path) == ("http://10.0.0.5:5001", True), "the server is the UI"


def test_without_a_known_ui_the_link_says_how_to_start_one(tmp_path: Path) -> None:
    base, known = ui_base(SQLITE, None, tmp_path)
    assert not known
    lines = link_lines(summary_for(base, known, model_name="adult-income", model_version="3"))
    assert lines[0].startswith(f"mlflow run:   {base}/#/experiments/7/runs/r1") and "make servers" in lines[0], lines
    assert lines[1] == f"mlflow model: {base}/#/models/adult-income/versions/3", lines


def test_the_repo_params_name_the_ui_url_key() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.tracking.ui_url is None, "params.yaml documents tracking.ui_url (null: derived)"
    keys = key_params(params)
    assert keys["task"] == "binary" and keys["families"] and keys["source"] == params.ingest.source, keys


def test_parent_run_summary_of_a_gate_record() -> None:
    record = {
        "metric": "log_loss",
        "direction": "minimize",
        "scores": {"candidate": 0.30, "champion": 0.32, "baselines": {"prior": 0.55, "heuristic": 0.41}},
        "candidate": {"family": "lightgbm", "valid_score": 0.29},
        "decision": "reject",
        "failed_gates": ["latency"],
    }
    assert headline_metrics(record) == {
        "test_log_loss": 0.30,
        "valid_log_loss": 0.29,
        "test_log_loss_champion": 0.32,
        "test_log_loss_best_baseline": 0.41,
        "gates_failed": 1.0,
    }, "the best baseline of a loss is the smallest"
    tags = outcome_tags(record, {"action": "rejected", "version": None, "champion_version": "2"})
    assert tags == {
        "retrain.decision": "reject",
        "retrain.family": "lightgbm",
        "retrain.failed_gates": "latency",
        "retrain.promotion": "rejected",
        "retrain.champion_version": "2",
    }, tags


def test_a_database_password_never_reaches_the_params() -> None:
    assert redact("postgresql+psycopg2://u:s3cret@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    assert redact("data/source/adult.csv.gz") == "data/source/adult.csv.gz"
