"""promote on a real registry: challenger first, champion by compare-and-set, every move audited."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from adapters import mlflow_audit as audit
from adapters.jsonfile import read_json
from flows.cli import main
from tests.promotion_project import MODEL, client, craft_record, other_family

pytestmark = pytest.mark.e2e


def uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def aliases(root: Path) -> dict[str, str]:
    return {k: str(v) for k, v in client(root).get_registered_model(MODEL).aliases.items()}


def test_first_run_sets_challenger_then_champion_and_audits_both(promo_base: Path) -> None:
    assert aliases(promo_base) == {"challenger": "1", "champion": "1"}, (
        "a passing first candidate is challenger and champion"
    )
    entries = audit.entries(uri(promo_base), MODEL)
    moves = [(e["alias"], e["from_version"], e["to_version"]) for e in entries]
    assert moves == [("challenger", None, "1"), ("champion", None, "1")], f"challenger is set first: {moves}"
    version = client(promo_base).get_model_version(MODEL, "1")
    for entry in entries:
        assert entry["trigger"] == "cli" and entry["decision"] == "promote", entry
        assert entry["actor"] and entry["time"].endswith("+00:00"), f"actor and UTC time recorded: {entry}"
        assert entry["gate_record"] == version.tags["retrain.gate_record"], "the entry links the version's record"
        assert client(promo_base).get_run(entry["run_id"]).data.tags["retrain.stage"] == "promote", "run id of promote"
    mlflow.set_tracking_uri(uri(promo_base))
    record = mlflow.artifacts.load_dict(version.tags["retrain.gate_record"])
    assert record["decision"] == version.tags["retrain.gate_decision"] == "promote"
    promotion = read_json(promo_base / "models/promote/promotion.json")
    assert promotion["action"] == "promoted" and promotion["challenger_version"] == promotion["champion_version"] == "1"
    assert [e["alias"] for e in promotion["audit"]] == ["challenger", "champion"], "summary shows the entries written"


def test_promotion_moves_champion_by_compare_and_set(promo: Path) -> None:
    craft_record(promo, other_family(promo), champion_version="1")
    (promo / "models/evaluate/model_card.html").write_text("<html><body>card</body></html>")
    assert main(["stage", "promote"]) == 0
    assert aliases(promo) == {"challenger": "2", "champion": "2"}, aliases(promo)
    version = client(promo).get_model_version(MODEL, "2")
    assert version.tags["retrain.family"] == other_family(promo)
    mlflow.set_tracking_uri(uri(promo))
    card = mlflow.artifacts.load_text(version.tags["retrain.model_card"])
    assert "card" in card, "the model card is logged to the promote run and linked from the version"
    moves = [(e["alias"], e["from_version"], e["to_version"]) for e in audit.entries(uri(promo), MODEL)][2:]
    assert moves == [("challenger", "1", "2"), ("champion", "1", "2")], moves
    assert main(["stage", "promote"]) == 0, "promoting the same candidate again is a no-op"
    assert len(client(promo).search_model_versions(f"name = '{MODEL}'")) == 2, "idempotent by model hash"
    assert len(audit.entries(uri(promo), MODEL)) == 4, "no alias moved, so no new audit entry"
    assert read_json(promo / "models/promote/promotion.json")["action"] == "already_champion"


def test_champion_moved_and_a_record_that_cannot_be_recompared_is_refused(
    promo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # evaluate saw version 1; the crafted record names another family but keeps the first family's test score,
    # so re-comparing it against the moved champion would not be the evaluated comparison: refused, exit 1
    craft_record(promo, other_family(promo), champion_version="1")
    v1 = client(promo).get_model_version(MODEL, "1")
    other = client(promo).create_model_version(MODEL, v1.source, run_id=v1.run_id)  # someone else's promotion
    client(promo).set_registered_model_alias(MODEL, "champion", other.version)
    before = len(audit.entries(uri(promo), MODEL))
    assert main(["stage", "promote"]) == 1, "a candidate that cannot be re-compared is refused (exit 1)"
    assert aliases(promo) == {"champion": "2", "challenger": "1"}, "no alias moved"
    assert len(client(promo).search_model_versions(f"name = '{MODEL}'")) == 2, "nothing registered"
    promotion = read_json(promo / "models/promote/promotion.json")
    assert promotion["action"] == "refused" and "from version 1 (seen by evaluate) to 2" in promotion["message"], (
        promotion
    )
    assert "cannot be re-compared" in promotion["message"] and "in the gate record" in promotion["message"], promotion
    assert "REFUSED" in caplog.text, "the refusal is logged"
    assert len(audit.entries(uri(promo), MODEL)) == before, "nothing moved, nothing audited"


def test_rejected_record_registers_and_moves_nothing(promo: Path) -> None:
    craft_record(
        promo, other_family(promo), champion_version="1", decision="reject", failed=["calibration", "invariance"]
    )
    before = len(audit.entries(uri(promo), MODEL))
    assert main(["stage", "promote"]) == 3, "a rejected candidate exits 3"
    assert len(client(promo).search_model_versions(f"name = '{MODEL}'")) == 1, "nothing registered"
    assert aliases(promo) == {"challenger": "1", "champion": "1"}, "no alias moved"
    assert len(audit.entries(uri(promo), MODEL)) == before, "nothing to audit"
    promotion = read_json(promo / "models/promote/promotion.json")
    assert promotion["action"] == "rejected" and "calibration, invariance" in promotion["message"], promotion
