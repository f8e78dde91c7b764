"""The model card: curves are small and JSON-able; the HTML is self-contained and has every section."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from retrain.evaluation.modelcard import MAX_POINTS, curves, render_model_card


class Card(HTMLParser):
    """Collects headings, images, table rows and every URL-bearing attribute of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.cells: list[str] = []
        self._heading = False
        self._cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self._heading = tag in {"h1", "h2", "h3"}
        self._cell = tag == "td"
        for name, value in attrs:
            if name in {"src", "href", "action", "srcset"} and value:
                self.urls.append(value)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_data(self, data: str) -> None:
        if self._heading:
            self.headings.append(data.strip())
            self._heading = False
        if self._cell:
            self.cells.append(data.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = False


def parse(page: str) -> Card:
    card = Card()
    card.feed(page)
    return card


def binary_data(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)


def record(curve: dict, task: str = "binary") -> dict:
    """A gate record shaped like tasks/evaluate.py writes it, with behavioural gate details."""
    return {
        "model_name": "adult-income",
        "candidate": {"family": "lightgbm", "model_hash": "f00d"},
        "task": task,
        "metric": "roc_auc",
        "scores": {"candidate": 0.91, "champion": 0.90},
        "decision": "reject",
        "failed_gates": ["invariance"],
        "data_hash": "d41d8cd98f00b204e9800998ecf8427e",
        "git_commit": "0c331d9",
        "params_hash": "abc123",
        "gates": [
            {
                "name": "beats_baselines",
                "value": 0.91,
                "threshold": 0.6,
                "passed": True,
                "skipped": False,
                "status": "pass",
                "reason": "roc_auc 0.91 beats 0.5 + 0.1",
                "details": {},
            },
            {
                "name": "invariance",
                "value": 0.2,
                "threshold": 0.05,
                "passed": False,
                "skipped": False,
                "status": "fail",
                "reason": "sex <script>alert(1)</script> flips 20% > 5%",
                "details": {"sex": {"flip_rate": 0.2, "mean_abs_dp": 0.07, "worst_swap": "Male->Female"}},
            },
            {
                "name": "fairness",
                "value": None,
                "threshold": None,
                "passed": True,
                "skipped": True,
                "status": "skipped",
                "reason": "disabled",
                "details": {},
            },
            {
                "name": "latency",
                "value": 0.9,
                "threshold": 50,
                "passed": True,
                "skipped": False,
                "status": "pass",
                "reason": "p95 0.9 ms",
                "details": {"latency": {"p95_ms": 0.9}, "size_mb": 1.2},
            },
        ],
        "slices": {
            "min_rows": 30,
            "columns": {
                "sex": [
                    {"value": "Male", "n": 250, "metric": 0.9},
                    {"value": "Female", "n": 150, "metric": 0.85, "gap": 0.05},
                    {"value": "Other", "n": 3, "metric": None, "skipped": "fewer than 30 test rows"},
                ]
            },
        },
        "curves": curve,
    }


def test_binary_curves_are_small_and_json() -> None:
    y, p = binary_data(3000)
    c = curves(y, p, "binary", ["<=50K", ">50K"])
    json.dumps(c, allow_nan=False)
    assert len(c["roc"]["fpr"]) <= MAX_POINTS and len(c["pr"]["recall"]) <= MAX_POINTS, "downsampled"
    assert c["roc"]["fpr"][0] == 0.0 and c["roc"]["tpr"][-1] == 1.0, "ROC keeps its end points"
    assert 0.8 < c["roc"]["auc"] < 1.0, c["roc"]["auc"]
    assert sum(c["calibration"]["count"]) == 3000, "every row falls in one calibration bin"


def test_multiclass_and_regression_curves() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    s = rng.dirichlet([1, 1, 1], 300)
    s[np.arange(300), y] += 0.6
    s /= s.sum(axis=1, keepdims=True)
    c = curves(y, s, "multiclass", ["a", "b", "c"])
    json.dumps(c, allow_nan=False)
    assert c["average"] == "micro" and set(c["per_class_auc"]) == {"a", "b", "c"}, c.keys()
    r = curves(y.astype(float), y + rng.normal(0, 0.3, 300), "regression", None)
    json.dumps(r, allow_nan=False)
    assert "roc" not in r and sum(r["residuals"]["counts"]) == 300, r.keys()
    assert len(r["predicted_vs_actual"]["actual"]) <= MAX_POINTS
    with pytest.raises(ValueError, match="unknown task"):
        curves(y, s, "ranking", None)


def test_card_has_every_section_and_no_external_reference() -> None:
    y, p = binary_data()
    page = render_model_card(record(curves(y, p, "binary", ["<=50K", ">50K"])))
    card = parse(page)
    for heading in (
        "Model card: adult-income",
        "Gates",
        "Test-set curves",
        "Calibration",
        "Slices",
        "Behavioural tests",
    ):
        assert any(h.startswith(heading) for h in card.headings), f"missing section {heading}: {card.headings}"
    assert len(card.images) == 2 and all(i.startswith("data:image/png;base64,") for i in card.images), card.images
    assert all(u.startswith("data:") for u in card.urls), f"external references: {card.urls}"
    assert not card.tags & {"script", "link", "iframe", "object"}, card.tags
    assert "<script>alert" not in page, "reasons are escaped"
    for text in (
        "reject",
        "invariance",
        "d41d8cd98f00b204e9800998ecf8427e",
        "0c331d9",
        "abc123",
        "Female",
        "Male-&gt;Female",
        "fewer than 30 test rows",
    ):
        assert text in page, f"{text!r} missing from the card"


def test_card_is_robust_to_missing_sections() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=200)
    regression = record(curves(y, y + rng.normal(0, 0.5, 200), "regression", None), task="regression")
    card = parse(render_model_card(regression))
    assert any(h.startswith("Residuals") for h in card.headings), card.headings
    assert not any(h.startswith("ROC") for h in card.headings), "a regression has no ROC"
    bare = parse(render_model_card({"decision": "promote"}))
    assert bare.headings[:2] == ["Model card: model", "Gates"], bare.headings
    assert not bare.images, "no curves, no plots"


def test_nonfinite_scores_are_counted_not_fatal() -> None:
    y, p = binary_data(200)
    p[:10] = np.nan
    c = curves(y, p, "binary", None)
    assert c["nonfinite_rows"] == 10 and c["roc"]["auc"] is not None, c.keys()
    json.dumps(c, allow_nan=False)
    broken = curves(y, np.full(200, np.nan), "binary", None)
    assert broken == {"task": "binary", "nonfinite_rows": 200}, broken
    assert "200 test rows had non-finite scores" in render_model_card(record(broken)), "the card says so"


def test_card_calibration_bins_are_the_gates_bins() -> None:
    from retrain.config import CalibrationGate
    from retrain.evaluation.calibration import calibration_gate

    y, p = binary_data(2000)
    p[:40] = 0.5  # on a bin edge: both must put these rows in the same bin
    card = curves(y, p, "binary", None)["calibration"]
    gate = calibration_gate(y, p, task="binary", cfg=CalibrationGate(bins=10)).details["reliability"]
    assert card["count"] == [row["rows"] for row in gate], f"card {card['count']} vs gate {gate}"
    assert card["mean_predicted"] == pytest.approx([row["mean_predicted"] for row in gate], abs=1e-6)
    assert card["fraction_positive"] == pytest.approx([row["observed"] for row in gate], abs=1e-6)


def test_template_is_package_data_shipped_by_pyproject() -> None:
    import tomllib
    from fnmatch import fnmatch
    from importlib.resources import files
    from pathlib import Path

    from retrain.evaluation.modelcard import TEMPLATE

    template = files("retrain.evaluation") / "templates" / TEMPLATE
    assert template.is_file(), f"{template} missing"
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["retrain.evaluation"]
    assert any(fnmatch(f"templates/{TEMPLATE}", pattern) for pattern in shipped), f"not shipped: {shipped}"


def test_gate_details_are_escaped_nested_and_truncated() -> None:
    details = {
        "<b>key</b>": "<img src=x onerror=alert(1)>",
        "deep": {"a": {"b": {"c": {"d": 1}}}},
        "long": list(range(60)),
        "rows": [{"group": "A&B", "rate": 0.123456789}, {"group": "C", "note": None}],
    }
    old_style = {"name": "perturbation", "passed": False, "skipped": False, "reason": "x", "details": details}
    page = render_model_card({**record({}), "gates": [old_style]})
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page, "values are escaped"
    assert "&lt;b&gt;key&lt;/b&gt;" in page, "keys are escaped"
    assert "0.1235" in page and "A&amp;B" in page, "floats to 4 significant digits, text escaped"
    assert "&#34;d&#34;: 1" in page or "&quot;d&quot;: 1" in page, "nesting deeper than 3 becomes JSON text"
    assert "49 &hellip; (+10)" in page, "long lists are cut at 50 items"
    card = parse(page)
    assert "perturbation:" in card.headings, f"a behavioural gate gets its own section: {card.headings}"
    assert '<span class="fail">fail</span>' in page, "an old record's gate (no status) is pass/fail from `passed`"
