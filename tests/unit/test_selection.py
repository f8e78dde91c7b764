"""Gate-aware selection: ranking on valid scores with the tie rule, lazy screening by the real label-free gates,
the record's reasons, and the policy reusing the chosen candidate's screening results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retrain.config import Params
from retrain.evaluation.gates import GateResult
from retrain.evaluation.latency import latency_gate, single_row_latency_ms
from retrain.evaluation.policy import gate_policy, label_free_gates
from retrain.evaluation.selection import (
    CHOSEN,
    NOT_SCREENED,
    SCREENED_OUT,
    TIED_LARGER,
    Ranked,
    Screening,
    directory_bytes,
    rank_candidates,
    screen,
    select,
    selection_lines,
    selection_record,
)
from retrain.models.estimators import build_model, pipeline_scores

# ------------------------------------------------------------------------------------------------ ranking


def families(ranking: list[Ranked]) -> list[str]:
    return [r.family for r in ranking]


def test_tied_candidates_go_smallest_first_then_the_rest_by_valid_score() -> None:
    scores = {"stacking": 0.93003, "lightgbm": 0.93000, "logreg": 0.9295, "hgb": 0.9100}
    sizes = {"stacking": 9_000_000, "lightgbm": 2_000_000, "logreg": 70_000, "hgb": 1_000}
    ranking = rank_candidates(scores, sizes, "roc_auc", tie_tolerance=0.001)
    # margin 0.001 x 0.93003 = 0.00093: logreg (0.00053 behind) is tied, hgb (0.02) is not, however small
    assert families(ranking) == ["logreg", "lightgbm", "stacking", "hgb"], ranking
    assert [r.tied for r in ranking] == [True, True, True, False]
    assert ranking[0].size_bytes == 70_000 and ranking[0].valid_score == 0.9295
    strict = rank_candidates(scores, sizes, "roc_auc", tie_tolerance=0.0)
    assert families(strict) == ["stacking", "lightgbm", "logreg", "hgb"], "no tolerance: plain valid order"
    assert [r.tied for r in strict] == [True, False, False, False], "the best is always tied with itself"


def test_the_tolerance_is_relative_and_respects_the_metric_direction() -> None:
    sizes = {"a": 300, "b": 200, "c": 100}
    auc = rank_candidates({"a": 0.9, "b": 0.8992, "c": 0.8989}, sizes, "roc_auc", tie_tolerance=0.001)
    assert families(auc) == ["b", "a", "c"] and not auc[2].tied, "0.0008 behind is tied, 0.0011 is not"
    scaled = rank_candidates({"a": 900.0, "b": 899.2, "c": 898.9}, sizes, "r2", tie_tolerance=0.001)
    assert families(scaled) == families(auc), "relative: the same ranking on a 1000x larger scale"
    rmse = rank_candidates({"a": 10.0, "b": 10.005, "c": 12.0}, sizes, "rmse", tie_tolerance=0.001)
    assert families(rmse) == ["b", "a", "c"], "lower is better: 10.005 is within 0.01 of the best 10.0"
    assert [r.tied for r in rmse] == [True, True, False]


def test_missing_scores_rank_last_and_equal_sizes_fall_back_to_score_then_name() -> None:
    scores = {"nan": float("nan"), "none": None, "z": 0.9, "y": 0.9, "x": 0.8999}
    sizes = dict.fromkeys(scores, 10)
    ranking = rank_candidates(scores, sizes, "roc_auc", tie_tolerance=0.001)
    assert families(ranking) == ["y", "z", "x", "nan", "none"], ranking
    assert ranking[3].valid_score is None and not ranking[3].tied
    again = rank_candidates(dict(reversed(list(scores.items()))), sizes, "roc_auc", tie_tolerance=0.001)
    assert families(again) == families(ranking), "the order of summary.json does not matter"
    with pytest.raises(ValueError, match="no candidates"):
        rank_candidates({}, {}, "roc_auc", 0.001)


def test_size_is_the_bytes_of_the_built_directory(tmp_path: Path) -> None:
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "model.txt").write_bytes(b"x" * 1234)
    (tmp_path / "m" / "sub" / "calibration.json").write_bytes(b"y" * 66)
    assert directory_bytes(tmp_path / "m") == 1300


# ---------------------------------------------------------------------------------- screening, real gates

TOY = {
    "dataset": {
        "name": "toy", "task": "binary", "target": "y", "labels": ["no", "yes"], "positive_label": "yes",
        "protected": ["sex"],
        "columns": {"x1": {"type": "float"}, "x2": {"type": "float"}, "sex": {"type": "category"}},
    },
    "ingest": {"source": "toy.csv"},
    "evaluate": {
        "selection": {"tie_tolerance": 0.001, "screen": ["directional", "invariance", "latency", "serving"]},
        "gates": {
            "directional": {"increasing": ["x1"], "step_std": 0.5, "max_violation_rate": 0.01},
            "invariance": {"max_flip_rate": 0.15, "max_mean_abs_delta": 0.1},
            "latency": {"rows": 20, "max_p95_ms": 60000, "max_size_mb": 1000},
            "serving": {"enabled": False},
            "perturbation": {"max_lift_share": 0.5},
            "champion": {"resamples": 50},
        },
    },
}  # fmt: skip
"""A binary table whose x1 should raise P(yes); serving off (a fresh process is tested in tests/tasks)."""


def toy_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = pd.Categorical(rng.choice(["F", "M"], n), categories=["F", "M"])
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "sex": sex})


def fitted(direction: float) -> Callable[[pd.DataFrame], np.ndarray]:
    """score_fn of a real logistic regression whose P(yes) rises (1) or falls (-1) with x1."""
    X = toy_rows(600, seed=1)
    noise = np.random.default_rng(2).normal(scale=0.5, size=len(X))
    y = (direction * X["x1"] + 0.5 * X["x2"] + noise > 0).astype(int).to_numpy()
    model = build_model("logreg", {"max_iter": 500}, ["x1", "x2"], ["sex"]).fit(X, y)
    return lambda frame: pipeline_scores(model, frame, "binary", 2)


PARAMS = Params.model_validate(TOY)
X_TEST = toy_rows(400, seed=3)
Y_TEST = (X_TEST["x1"] + 0.5 * X_TEST["x2"] > 0).astype(int).to_numpy()
MODELS = {"reversed": fitted(-1.0), "good": fitted(1.0), "also_good": fitted(1.0)}


class Probe:
    """One candidate's label-free gates, as evaluate builds them: real latency measurement, real gates."""

    def __init__(self, score_fn: Callable[[pd.DataFrame], np.ndarray], params: Params = PARAMS) -> None:
        self.score_fn, self.params, self.latency_calls = score_fn, params, 0

    def measure_latency(self) -> GateResult:
        self.latency_calls += 1
        cfg = self.params.evaluate.gates.latency
        latency = single_row_latency_ms(self.score_fn, X_TEST, cfg.rows)
        return latency_gate(latency, 0.01, cfg=cfg, champion=None)

    def check_serving(self) -> GateResult:
        raise AssertionError("serving is disabled in TOY: it must never run")

    def gates(self) -> dict[str, Any]:
        return label_free_gates(
            self.params, self.params.dataset, self.score_fn, X_TEST, None, self.measure_latency, self.check_serving
        )


def test_the_best_on_valid_failing_a_screen_is_passed_over_lazily() -> None:
    ranking = rank_candidates(
        {"reversed": 0.95, "good": 0.90, "also_good": 0.85}, dict.fromkeys(MODELS, 100), "roc_auc", 0.001
    )
    probes = {name: Probe(fn) for name, fn in MODELS.items()}
    screened: list[str] = []

    def screen_fn(entry: Ranked) -> Screening:
        screened.append(entry.family)
        return screen(entry.family, PARAMS.evaluate.selection.screen, probes[entry.family].gates())

    selection = select(ranking, screen_fn)
    assert selection.chosen == "good" and not selection.all_screened_out
    assert screened == ["reversed", "good"], "lazy: screening stops at the first candidate that passes"
    first = selection.screenings["reversed"]
    assert list(first.results) == ["directional"], "a candidate's screening stops at its first failing gate"
    assert probes["reversed"].latency_calls == 0 and first.failed is not None and first.failed.value > 0.01
    good = selection.screenings["good"]
    assert list(good.results) == ["directional", "invariance", "latency"], "serving is disabled: not run"
    assert good.passed and set(good.seconds) == set(good.results)

    record = selection_record(selection, metric="roc_auc", tie_tolerance=0.001, screen_names=("directional",))
    json.dumps(record, allow_nan=False)
    status = {r["family"]: r["status"] for r in record["ranking"]}
    assert status == {"reversed": SCREENED_OUT, "good": CHOSEN, "also_good": NOT_SCREENED}, status
    short = f"passed over: directional failed (violation_rate {first.failed.value:.4g}, threshold 0.01)"
    assert record["ranking"][0]["short"] == short, record["ranking"][0]
    [over] = record["passed_over"]
    assert over["family"] == "reversed" and over["gate"] == "directional", over
    assert over["value"] == first.failed.value and over["threshold"] == 0.01
    assert "directional failed" in over["reason"] and "x1" in over["reason"], over["reason"]
    assert record["chosen"] == "good" and record["chosen_rank"] == 2
    assert record["ranking"][0]["screening"]["directional"]["status"] == "fail"
    assert selection_lines(record) == [f"selection: passed over reversed: {over['reason']}"]


def test_every_candidate_screened_out_gates_the_top_ranked_one() -> None:
    strict = Params.model_validate(
        {**TOY, "evaluate": {**TOY["evaluate"], "gates": {**TOY["evaluate"]["gates"], "latency": {"rows": 10,
         "max_p95_ms": 1e-6}}}}
    )  # fmt: skip
    ranking = rank_candidates({"good": 0.9, "also_good": 0.8}, {"good": 1, "also_good": 1}, "roc_auc", 0.0)
    probes = {name: Probe(MODELS[name], strict) for name in ("good", "also_good")}
    selection = select(ranking, lambda e: screen(e.family, strict.evaluate.selection.screen, probes[e.family].gates()))
    assert selection.all_screened_out and selection.chosen == "good", "top-ranked, so the record shows why"
    record = selection_record(selection, metric="roc_auc", tie_tolerance=0.0, screen_names=("latency",))
    assert (
        record["ranking"][0]["status"] == CHOSEN
        and "every candidate failed screening" in record["ranking"][0]["reason"]
    )
    assert [p["family"] for p in record["passed_over"]] == ["also_good"]
    assert record["passed_over"][0]["gate"] == "latency" and record["passed_over"][0]["threshold"] == 1e-6
    assert selection_lines(record)[-1].startswith("selection: every candidate failed screening")


def test_a_tied_larger_candidate_is_passed_over_with_the_size_reason() -> None:
    ranking = rank_candidates(
        {"big": 0.90004, "small": 0.9, "low": 0.7}, {"big": 5000, "small": 40, "low": 1}, "roc_auc", 0.001
    )
    probes = {name: Probe(MODELS["good"]) for name in ("big", "small", "low")}
    selection = select(ranking, lambda e: screen(e.family, ("directional",), probes[e.family].gates()))
    assert selection.chosen == "small" and list(selection.screenings) == ["small"]
    record = selection_record(selection, metric="roc_auc", tie_tolerance=0.001, screen_names=("directional",))
    by_family = {r["family"]: r for r in record["ranking"]}
    assert by_family["big"]["status"] == TIED_LARGER and by_family["low"]["status"] == NOT_SCREENED
    assert record["passed_over"] == [
        {
            "family": "big",
            "reason": "tied with the best valid score (within 0.001 x |best|), larger than small (5000 vs 40 bytes)",
            "gate": None,
        }
    ]


def test_no_screening_gate_enabled_gates_the_top_ranked_candidate() -> None:
    ranking = rank_candidates({"reversed": 0.95, "good": 0.9}, {"reversed": 1, "good": 1}, "roc_auc", 0.0)
    selection = select(ranking, lambda e: screen(e.family, (), Probe(MODELS[e.family]).gates()))
    assert selection.chosen == "reversed" and not selection.all_screened_out
    record = selection_record(selection, metric="roc_auc", tie_tolerance=0.0, screen_names=())
    assert record["passed_over"] == [] and record["ranking"][1]["status"] == NOT_SCREENED


# ------------------------------------------------------------------------ the policy reuses the screening


def test_the_policy_reuses_the_screening_results_and_derives_the_perturbation_bound() -> None:
    probe = Probe(MODELS["good"])
    screening = screen("good", PARAMS.evaluate.selection.screen, probe.gates())
    assert screening.passed and probe.latency_calls == 1
    scores = probe.score_fn(X_TEST)
    from retrain.metrics import score

    candidate = score("roc_auc", Y_TEST, scores)
    context = {
        "candidate_score": candidate,
        "baseline_scores": {"uniform": 0.5, "heuristic": 0.7},
        "champion_scores": None,
        "confidence_threshold": None,
    }
    gates, extra = gate_policy(
        PARAMS, PARAMS.dataset, probe.score_fn, X_TEST, Y_TEST, scores, context, probe.measure_latency,
        probe.check_serving, screened=screening.results, screened_seconds=screening.seconds,
    )  # fmt: skip
    by_name = {g.name: g for g in gates}
    for name in ("directional", "invariance", "latency"):
        assert by_name[name] is screening.results[name], f"{name}: the screening result itself, not a rerun"
        assert extra["gate_seconds"][name] == screening.seconds[name]
    assert probe.latency_calls == 1, "latency is measured once, in screening"
    assert by_name["serving"].skipped
    perturbation = by_name["perturbation"]
    lift = candidate - 0.7
    assert perturbation.threshold == pytest.approx(0.5 * lift, abs=1e-12), perturbation
    assert f"0.5 x lift {lift:+.4f} over best baseline heuristic 0.7000" in perturbation.reason, perturbation.reason


# --------------------------------------------------------------- where a person sees it: model card, CLI summary

SELECTION = {
    "metric": "roc_auc", "direction": "higher_is_better", "tie_tolerance": 0.001,
    "screen": ["latency", "directional", "invariance", "serving"],
    "ranking": [
        {"rank": 1, "family": "stacking", "valid_score": 0.93003, "size_bytes": 9000000, "tied": True,
         "status": SCREENED_OUT, "reason": "latency failed (p95_ms 31.2, threshold 20): p95_ms 31.200 ms is over [20]",
         "short": "passed over: latency failed (p95_ms 31.2, threshold [20])"},
        {"rank": 2, "family": "logreg", "valid_score": 0.93, "size_bytes": 70000, "tied": True, "status": CHOSEN,
         "reason": "passed every screening gate", "short": "chosen"},
        {"rank": 3, "family": "lightgbm", "valid_score": 0.929999, "size_bytes": 2000000, "tied": True,
         "status": TIED_LARGER, "reason": "tied with the best valid score (within 0.001 x |best|), larger than logreg",
         "short": "passed over: tied, larger than logreg"},
    ],
    "chosen": "logreg", "chosen_rank": 2, "all_screened_out": False,
    "passed_over": [
        {"family": "stacking", "reason": "latency failed (p95_ms 31.2, threshold 20): ...", "gate": "latency",
         "value": 31.2, "threshold": 20.0},
        {"family": "lightgbm", "reason": "tied with the best valid score (within 0.001 x |best|), larger than logreg",
         "gate": None},
    ],
}  # fmt: skip


def test_the_model_card_and_the_run_summary_show_the_selection() -> None:
    import io

    from rich.console import Console

    from flows.cli import print_summary
    from retrain.evaluation.modelcard import render_model_card

    page = render_model_card({"model_name": "m", "candidate": {"family": "logreg"}, "selection": SELECTION})
    assert "<h2>Selection</h2>" in page and "chosen: logreg (rank 2 of 3" in page, page
    assert "p95_ms 31.200 ms is over [20]" in page and "passed over</td><td>stacking (latency), lightgbm" in page
    assert "every candidate failed screening" not in page
    screened_out = render_model_card({"selection": {**SELECTION, "all_screened_out": True}})
    assert "every candidate failed screening" in screened_out

    families = {f: {"valid_score": r["valid_score"], "beats_baselines": True, "best_baseline": "heuristic"}
                for f, r in ((r["family"], r) for r in SELECTION["ranking"])}  # fmt: skip
    summary = {
        "stages": [], "families": families, "metrics": {"evaluate": {"test_roc_auc": 0.92}}, "family": "logreg",
        "metric": "roc_auc", "gates": [], "decision": "promote", "promotion": "promoted", "model_name": "m",
        "champion_version": "1", "data_hash": "h", "selection": SELECTION,
    }  # fmt: skip
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "#2 tied chosen" in text and "#3 tied passed over: tied, larger than logreg" in text, text
    assert "#1 tied passed over: latency failed (p95_ms 31.2, threshold [20])" in text, "brackets are not rich markup"
    assert "selected logreg: test roc_auc 0.9200 (no champion yet); rank 2 of 3 on valid; passed over stacking " in text
    assert "(latency), lightgbm (tied, larger)" in text, text
    old = {k: v for k, v in summary.items() if k != "selection"}
    out = io.StringIO()
    print_summary(old, Console(file=out, width=200, color_system=None))
    assert "selection" not in out.getvalue() and "selected logreg" in out.getvalue(), "a summary without selection"
