"""`retrain history`, `retrain rollback` and `retrain run --dry-run` on a real registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters import mlflow_audit as audit
from flows.cli import main
from tests.promotion_project import (
    MODEL,
    champion_predictions,
    cli_json,
    client,
    craft_record,
    other_family,
)

pytestmark = pytest.mark.e2e


def champion(root: Path) -> str:
    return str(client(root).get_model_version_by_alias(MODEL, "champion").version)


def test_history_and_rollback_restore_the_exact_previous_predictions(promo: Path, capsys) -> None:
    before = champion_predictions(promo)
    craft_record(promo, other_family(promo), champion_version="1")
    assert main(["stage", "promote"]) == 0 and champion(promo) == "2"
    assert not np.array_equal(champion_predictions(promo), before), "the second champion must predict differently"

    code, history = cli_json(["history"], capsys)
    assert code == 0
    moves = [(e["alias"], e["from_version"], e["to_version"]) for e in history["entries"]]
    assert moves == [
        ("challenger", None, "1"),
        ("champion", None, "1"),
        ("challenger", "1", "2"),
        ("champion", "1", "2"),
    ]
    assert main(["history"]) == 0
    table = capsys.readouterr().out
    assert "champion" in table and "1 -> 2" in table and "runs:/" in table, f"table shows moves and records: {table}"

    code, result = cli_json(["rollback"], capsys)
    assert code == 0 and result["from_version"] == "2" and result["to_version"] == "1", result
    assert champion(promo) == "1"
    assert np.array_equal(champion_predictions(promo), before), "rollback serves the previous champion's exact outputs"
    newest = audit.entries(f"sqlite:///{promo / 'mlflow.db'}", MODEL)[-1]
    assert (newest["alias"], newest["from_version"], newest["to_version"], newest["trigger"]) == (
        "champion",
        "2",
        "1",
        "rollback",
    ), newest
    assert main(["rollback", "--to", "99"]) == 2, "an unknown version is a usage error"
    assert main(["rollback", "--to", "2"]) == 0 and champion(promo) == "2", "--to an earlier champion"


def test_rollback_without_previous_champion_exits_2(promo: Path) -> None:
    entries = len(audit.entries(f"sqlite:///{promo / 'mlflow.db'}", MODEL))
    assert main(["rollback"]) == 2, "the first champion has nothing before it"
    assert champion(promo) == "1" and len(audit.entries(f"sqlite:///{promo / 'mlflow.db'}", MODEL)) == entries


def test_history_of_unknown_model_exits_2(promo_base: Path, use_root) -> None:
    use_root(promo_base)
    assert main(["history", "--model", "no-such-model"]) == 2


def test_dry_run_touches_no_alias_and_exits_by_decision(promo: Path, capsys) -> None:
    client(promo).delete_registered_model_alias(MODEL, "champion")  # as if no champion: evaluate stays cached
    versions = len(client(promo).search_model_versions(f"name = '{MODEL}'"))
    entries = len(audit.entries(f"sqlite:///{promo / 'mlflow.db'}", MODEL))

    code, summary = cli_json(["run", "--dry-run"], capsys)
    assert code == 0 and summary["promotion"] == "would_promote", summary.get("promotion_message")
    assert "would promote existing version 1" in summary["promotion_message"], summary["promotion_message"]
    stages = {s["name"]: s["status"] for s in summary["stages"]}
    assert {v for k, v in stages.items() if k != "promote"} == {"cached"}, f"dry run keeps the cache: {stages}"

    code, summary = cli_json(["run", "--dry-run", "--set", "evaluate.gates.baseline.margin=0.99"], capsys)
    assert code == 3 and summary["promotion"] == "would_reject", summary.get("promotion_message")
    assert summary["failed_gates"] and summary["promotion_message"].startswith("would reject: "), summary

    model = client(promo).get_registered_model(MODEL)
    assert {k: str(v) for k, v in model.aliases.items()} == {"challenger": "1"}, "no alias moved by a dry run"
    assert len(client(promo).search_model_versions(f"name = '{MODEL}'")) == versions, "nothing registered"
    assert len(audit.entries(f"sqlite:///{promo / 'mlflow.db'}", MODEL)) == entries, "nothing audited"
