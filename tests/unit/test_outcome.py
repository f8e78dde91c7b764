"""What the Prefect UI shows of a run (flows/outcome.py): the state named after the decision, the Markdown report."""

from __future__ import annotations

import copy
import re

import pytest

from flows import outcome

RECORD_GATES = [
    {
        "name": "beats_baselines",
        "value": 0.8123456,
        "threshold": 0.85,
        "passed": False,
        "skipped": False,
        "status": "fail",
        "reason": "0.8123 < best baseline | heuristic <0.80> + margin 0.05",
        "metric": "roc_auc",
        "direction": "higher_is_better",
        "details": {},
    },
    {
        "name": "no_regression_vs_champion",
        "value": 0.002,
        "threshold": 0.005,
        "passed": True,
        "skipped": False,
        "status": "pass",
        "reason": "drop 0.002 within tolerance\n0.005",
        "metric": "roc_auc",
        "direction": "higher_is_better",
        "details": {},
    },
    {"name": "fairness", "value": None, "threshold": None, "passed": True, "skipped": True, "reason": "disabled"},
]
"""Gates as models/evaluate/gate_record.json holds them (GateResult.to_dict); the last one without `status`."""

SUMMARY = {
    "stages": [{"name": "evaluate", "status": "ran", "seconds": 2.0}],
    "metrics": {"evaluate": {"test_roc_auc": 0.8123456}},
    "gates": RECORD_GATES,
    "families": {
        "lightgbm": {
            "cv_score": 0.83,
            "valid_score": 0.8312,
            "n_trials": 2,
            "n_pruned": 1,
            "beats_baselines": True,
            "best_baseline": "heuristic",
            "best_baseline_score": 0.8,
        },
        "logreg": {"cv_score": 0.79, "valid_score": 0.78, "beats_baselines": False, "best_baseline": "heuristic"},
    },
    "family": "lightgbm",
    "selection": {
        "ranking": [
            {"family": "lightgbm", "rank": 1, "status": "chosen", "short": "chosen"},
            {"family": "logreg", "rank": 2, "status": "not_screened", "short": "not screened"},
        ]
    },
    "decision": "reject",
    "failed_gates": ["beats_baselines"],
    "promotion": "rejected",
    "promotion_message": "candidate rejected by gates beats_baselines; champion left at 1",
    "dry_run": False,
    "model_name": "adult-income",
    "model_version": None,
    "challenger_version": "1",
    "champion_version": "1",
    "audit": [],
    "data_hash": "d41d8cd98f00b204e9800998ecf8427e",
    "metric": "roc_auc",
    "mlflow_run_id": "parent0",
    "mlflow_experiment_id": "7",
    "tracking_uri": "sqlite:///mlflow.db",
}
STAGE_RUNS = {"evaluate": "eval0", "promote": "prom0"}


def summary(**changes: object) -> dict:
    """SUMMARY with some keys changed."""
    return copy.deepcopy(SUMMARY) | changes


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the table under `### heading`, split on unescaped pipes."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) >= 2, f"no table under {heading}:\n{section}"
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[2:]]


def test_the_report_shows_every_gate_candidate_the_decision_and_links() -> None:
    links, note = outcome.mlflow_links(SUMMARY, STAGE_RUNS, "http://mlflow.example:5001/", None)
    markdown = outcome.render_report(SUMMARY, links, note)
    assert markdown.startswith("## Rejected: adult-income\n"), markdown[:200]
    gates = {row[0]: row for row in table_rows(markdown, "Gates")}
    assert list(gates) == ["beats_baselines", "no_regression_vs_champion", "fairness"], gates
    assert all(len(row) == 5 for row in gates.values()), f"a cell broke the table: {gates}"
    assert gates["beats_baselines"][1:4] == ["❌ **FAIL**", "0.8123", "0.85"], gates["beats_baselines"]
    assert gates["beats_baselines"][4] == r"0.8123 &lt; best baseline \| heuristic &lt;0.80&gt; + margin 0.05", (
        "a reason's pipe is escaped and its angle brackets are not HTML"
    )
    assert gates["no_regression_vs_champion"][4] == "drop 0.002 within tolerance 0.005", "a reason stays on one line"
    assert gates["fairness"][1:4] == ["⏭️ skipped", "-", "-"], "a record without `status`: skipped from `skipped`"
    families = {row[0]: row for row in table_rows(markdown, "Candidates")}
    assert families["lightgbm"] == ["lightgbm", "0.83", "0.8312", "2 (1 pruned)", "beats heuristic (0.8)", "#1 chosen"]
    assert families["logreg"][3:] == ["-", "FAILS TO BEAT heuristic (-)", "#2 not screened"], families["logreg"]
    assert "- decision: **reject** (failed: beats_baselines)" in markdown, markdown
    assert "- promotion: **rejected**: candidate rejected by gates beats_baselines" in markdown, markdown
    base = "http://mlflow.example:5001/#"
    for label, url in [
        ("MLflow parent run", f"{base}/experiments/7/runs/parent0"),
        ("champion (unchanged)", f"{base}/models/adult-income/versions/1"),
        ("model card", f"{base}/experiments/7/runs/prom0/artifacts/model_card.html"),
    ]:
        assert f"- {label}: [{url}]({url})" in markdown, f"{label} link missing:\n{markdown}"
    assert note is None and "make servers" not in markdown, "a configured UI needs no hint"


def test_without_a_known_ui_the_report_says_how_to_start_one() -> None:
    links, note = outcome.mlflow_links(summary(promotion="promoted", model_version="2"), {}, None, None)
    assert [link.label for link in links] == ["MLflow parent run", "model version", "champion (unchanged)"], links
    markdown = outcome.render_report(summary(), links, note)
    assert note and "make servers" in note and note in markdown, markdown


@pytest.mark.parametrize(
    ("changes", "name", "kind", "needles"),
    [
        (
            {"decision": "promote", "failed_gates": [], "promotion": "promoted", "model_version": "2"}
            | {"champion_version": "2", "audit": [{"alias": "champion", "from_version": "1", "to_version": "2"}]},
            "Promoted",
            "COMPLETED",
            ["decision promote (every gate passed)", "version 2 is champion now (was 1)"],
        ),
        (
            {"decision": "promote", "failed_gates": [], "promotion": "already_champion", "model_version": "1"},
            "Kept",
            "COMPLETED",
            ["version 1 is already champion"],
        ),
        ({}, "Rejected", "COMPLETED", ["decision reject (failed beats_baselines)", "champion stays version 1"]),
        (
            {"decision": "promote", "failed_gates": [], "promotion": "refused", "model_version": None}
            | {"champion_version": "2", "promotion_message": "promote: REFUSED: ... test split changed"},
            "Refused",
            "FAILED",
            ["could not be re-compared", "now version 2", "test split changed"],
        ),
        (
            {"decision": "promote", "failed_gates": [], "promotion": "rejected_on_recompare", "model_version": None}
            | {"champion_version": "2", "promotion_message": "no_regression_vs_champion FAIL: roc_auc -0.03"},
            "Rejected",
            "COMPLETED",
            ["lost the re-comparison", "champion stays version 2", "no_regression_vs_champion FAIL"],
        ),
        (
            {"dry_run": True, "promotion": "would_reject", "promotion_message": "would reject: beats_baselines"},
            "DryRun",
            "COMPLETED",
            ["dry run, nothing changed: would reject: beats_baselines"],
        ),
    ],
)
def test_the_final_state_is_named_after_the_decision_and_carries_the_summary(
    changes: dict, name: str, kind: str, needles: list[str]
) -> None:
    run = summary(**changes)
    state = outcome.final_state(run)
    assert (state.name, state.type.value) == (name, kind), state
    assert "\n" not in state.message, "the state message is one line"
    for needle in needles:
        assert needle in state.message, f"{needle!r} not in {state.message!r}"
    assert "lightgbm test roc_auc 0.8123" in state.message, state.message
    assert state.data == run, "the state's data is the run summary (`retrain run` reads state.result())"


def test_a_failed_run_reports_what_is_known() -> None:
    partial = summary(gates=[], families={}, decision=None, failed_gates=[], promotion=None, champion_version=None)
    markdown = outcome.render_report(partial, [], None, error=ValueError("bad <column> | x"))
    assert markdown.startswith("## Failed: adult-income"), markdown[:100]
    assert "**The run failed:** ValueError: bad &lt;column&gt; \\| x" in markdown, markdown
    assert "No gate ran in this run." in markdown and "- no MLflow run was opened" in markdown, markdown
    assert "- stages: evaluate ran 2s\n" in markdown, "the stages that ran before the failure are listed"
