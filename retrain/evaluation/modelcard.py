"""The model card: one self-contained HTML page rendered from the gate record alone.

`curves` turns test labels and scores into small JSON-able curves that the gate record keeps
(`record["curves"]`), so the card can be re-rendered later from the record without the model or data.
`render_model_card` draws them with matplotlib (Agg, inline base64 PNG) and renders the page from the
Jinja2 template `templates/model_card.html.j2` (autoescaped) with the gate table, the slice table and the
behavioural gates' details. The page references nothing outside itself (no scripts, fonts, stylesheets or
images over the network), and every section is optional: a regression has no ROC, an old record has no
curves, a skipped gate has no details.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup, escape
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from retrain.evaluation.calibration import reliability_bins

if TYPE_CHECKING:
    import jinja2

MAX_POINTS = 200
"""Each curve is downsampled to at most this many points (the record stays small)."""
BEHAVIOURAL = ("perturbation", "invariance", "directional", "fairness")
"""Gates whose details form the card's behavioural section (matched as substrings of the gate name)."""
TEMPLATE = "model_card.html.j2"
"""The page template, package data of retrain.evaluation (templates/), rendered with autoescaping on."""
RESOURCES = ("templates/model_card.html.j2",)
"""Files this module reads at run time: engine/codedeps.py counts them as evaluate's code."""
MAX_DEPTH = 3
"""Gate details nest as tables this deep; anything deeper is shown as (truncated) JSON."""
MAX_LIST = 50
"""A plain list in gate details shows this many items, then the count of the rest."""


def _downsample(*arrays: np.ndarray, limit: int = MAX_POINTS) -> list[list[float]]:
    """The same evenly spaced indices of every array (first and last kept), as float lists."""
    n = len(arrays[0])
    index = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else np.array([], dtype=int)
    return [[_num(v) for v in np.asarray(a, dtype=float)[index]] for a in arrays]


def _num(value: float) -> float | None:
    """A finite float rounded for JSON, or None."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def _binary_curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """ROC and PR of one score against a 0/1 target (None when the target has one class)."""
    if len(np.unique(y)) < 2:
        return {"roc": None, "pr": None}
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    fpr_s, tpr_s = _downsample(fpr, tpr)
    precision_s, recall_s = _downsample(precision[::-1], recall[::-1])
    return {
        "roc": {"fpr": fpr_s, "tpr": tpr_s, "auc": _num(roc_auc_score(y, p))},
        "pr": {"precision": precision_s, "recall": recall_s, "average_precision": _num(average_precision_score(y, p))},
    }


def _reliability(confidence: np.ndarray, hit: np.ndarray, bins: int) -> dict[str, list]:
    """Equal-width bins on [0, 1]: mean predicted probability vs observed frequency and count (empty bins dropped).

    The same bins as the calibration gate (retrain.evaluation.calibration.reliability_bins, i.e. sklearn's
    calibration_curve with strategy="uniform"), so the card's table is the gate's reliability table.
    """
    counts, mean_pred, mean_obs = reliability_bins(hit, confidence, bins)
    used = counts > 0
    return {
        "mean_predicted": [_num(v) for v in mean_pred[used]],
        "fraction_positive": [_num(v) for v in mean_obs[used]],
        "count": [int(c) for c in counts[used]],
    }


def curves(y: np.ndarray, scores: np.ndarray, task: str, labels: Sequence[str] | None, bins: int = 10) -> dict:
    """JSON-able curves of test scores for the card: ROC, PR and calibration (classification) or residuals.

    Binary: ROC, PR and calibration of P(positive). Multiclass: micro-averaged one-vs-rest ROC and PR,
    per-class ROC AUC, and calibration of the top-class probability against accuracy. Regression: a
    residual histogram, a predicted-vs-actual sample and mean actual per predicted-value bin.
    """
    y = np.asarray(y)
    s = np.asarray(scores, dtype=float)
    finite = np.isfinite(s) if s.ndim == 1 else np.isfinite(s).all(axis=1)
    if task in ("binary", "multiclass", "regression") and not finite.all():
        # NaN / inf scores (a broken candidate) are left out of the curves and counted, never a crash
        out = curves(y[finite], s[finite], task, labels, bins) if finite.any() else {"task": task}
        return {**out, "nonfinite_rows": int((~finite).sum())}
    if task == "binary":
        y01 = y.astype(int)
        return {"task": task, **_binary_curves(y01, s), "calibration": _reliability(s, y01.astype(float), bins)}
    if task == "multiclass":
        k = s.shape[1]
        onehot = np.zeros_like(s)
        onehot[np.arange(len(y)), y.astype(int)] = 1.0
        micro = _binary_curves(onehot.ravel(), s.ravel())
        names = [str(v) for v in labels] if labels is not None else [str(i) for i in range(k)]
        per_class = {
            names[c]: _num(roc_auc_score(onehot[:, c], s[:, c])) if 0 < onehot[:, c].sum() < len(y) else None
            for c in range(k)
        }
        top = s.argmax(axis=1)
        calibration = _reliability(s.max(axis=1), (top == y.astype(int)).astype(float), bins)
        return {"task": task, "average": "micro", **micro, "per_class_auc": per_class, "calibration": calibration}
    if task == "regression":
        y = y.astype(float)
        residual = y - s
        counts, edges = np.histogram(residual[np.isfinite(residual)], bins=max(bins, 20))
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(y), size=min(len(y), MAX_POINTS), replace=False)) if len(y) else []
        order = np.argsort(s, kind="stable")
        groups = np.array_split(order, min(bins, len(order))) if len(order) else []
        return {
            "task": task,
            "residuals": {"edges": [_num(e) for e in edges], "counts": [int(c) for c in counts]},
            "predicted_vs_actual": {
                "predicted": [_num(v) for v in s[sample]],
                "actual": [_num(v) for v in y[sample]],
            },
            "calibration": {
                "mean_predicted": [_num(s[g].mean()) for g in groups],
                "mean_actual": [_num(y[g].mean()) for g in groups],
                "count": [len(g) for g in groups],
            },
        }
    raise ValueError(f"unknown task {task!r}")


# ---------------------------------------------------------------------------------------------- rendering


def _cell(value: Any) -> Markup:
    """The text of any value for a table cell, escaped (floats to 4 significant digits, None as a dash)."""
    if value is None:
        return Markup("&ndash;")
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    return escape(str(value))


def _compact_json(value: Any) -> str:
    """A too-deeply nested value as JSON text, cut at 400 characters (escaped by the template)."""
    return json.dumps(value, default=str)[:400]


def _record_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The union of the rows' keys, in first-seen order: the columns of a list-of-dicts table."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _is_records(value: Any) -> bool:
    """A non-empty list whose items are all dicts (rendered as a table)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


@functools.cache
def _environment() -> jinja2.Environment:
    """The Jinja2 environment of the card: package templates, autoescape always on, undefined names fail."""
    import jinja2  # at first render: importing this module (tasks/evaluate.py does) stays cheap

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("retrain.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(cell=_cell, compact_json=_compact_json, record_keys=_record_keys)
    env.tests.update(records=_is_records, list=lambda v: isinstance(v, list))
    return env


def _png(fig: Any) -> str:
    """The figure as an inline base64 PNG data URI (for an <img src>)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(n: int) -> tuple[Any, Any]:
    """n side-by-side axes on the Agg backend (no display, no fonts fetched)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8))
    return fig, np.atleast_1d(axes)


def _points(values: Any) -> np.ndarray:
    """A float array from a JSON list (None as NaN)."""
    return np.asarray([math.nan if v is None else v for v in values or []], dtype=float)


def _section(heading: str, image: str | None = None, table: dict | None = None, folded: bool = False) -> dict:
    """One block of the curves section: an h3, an optional plot, an optional table (folded: in <details>)."""
    return {"heading": heading, "image": image, "table": table, "folded": folded}


def _plots(curve: Mapping[str, Any]) -> list[dict]:
    """ROC/PR and calibration plots (classification) or residual plots (regression) from `curves()` output."""
    parts = []
    roc, pr, cal = curve.get("roc"), curve.get("pr"), curve.get("calibration")
    if roc or pr:
        fig, (ax1, ax2) = _figure(2)
        if roc:
            ax1.plot(_points(roc.get("fpr")), _points(roc.get("tpr")), label=f"AUC {_fmt(roc.get('auc'))}")
            ax1.plot([0, 1], [0, 1], ls="--", c="#999", lw=1)
            ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
            ax1.legend(loc="lower right")
        if pr:
            ax2.plot(
                _points(pr.get("recall")), _points(pr.get("precision")), label=f"AP {_fmt(pr.get('average_precision'))}"
            )
            ax2.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
            ax2.legend(loc="lower left")
        suffix = " (micro-average over classes)" if curve.get("average") == "micro" else ""
        parts.append(_section(f"ROC and precision-recall{suffix}", _png(fig)))
    if cal and "fraction_positive" in cal:
        fig, (ax,) = _figure(1)
        x, y = _points(cal.get("mean_predicted")), _points(cal.get("fraction_positive"))
        ax.plot([0, 1], [0, 1], ls="--", c="#999", lw=1)
        ax.plot(x, y, marker="o")
        what = "top-class probability vs accuracy" if curve.get("task") == "multiclass" else "P(positive)"
        ax.set(xlabel="mean predicted", ylabel="observed frequency", title=f"calibration ({what})")
        rows = zip(cal.get("mean_predicted", []), cal.get("fraction_positive", []), cal.get("count", []), strict=False)
        table = {"headers": ["mean predicted", "observed", "rows"], "rows": list(rows)}
        parts.append(_section("Calibration", _png(fig), table, folded=True))
    residuals, pva = curve.get("residuals"), curve.get("predicted_vs_actual")
    if residuals or pva:
        fig, (ax1, ax2) = _figure(2)
        if residuals:
            edges, counts = _points(residuals.get("edges")), _points(residuals.get("counts"))
            if len(edges) == len(counts) + 1 and len(counts):
                ax1.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0")
            ax1.set(xlabel="actual - predicted", ylabel="rows", title="residuals")
        if pva:
            p, a = _points(pva.get("predicted")), _points(pva.get("actual"))
            ax2.scatter(p, a, s=8, alpha=0.6)
            if len(p):
                lo, hi = np.nanmin(np.r_[p, a]), np.nanmax(np.r_[p, a])
                ax2.plot([lo, hi], [lo, hi], ls="--", c="#999", lw=1)
            ax2.set(xlabel="predicted", ylabel="actual", title="predicted vs actual (sample)")
        parts.append(_section("Residuals", _png(fig)))
    if cal and "mean_actual" in cal:
        rows = zip(cal.get("mean_predicted", []), cal.get("mean_actual", []), cal.get("count", []), strict=False)
        table = {"headers": ["mean predicted", "mean actual", "rows"], "rows": list(rows)}
        parts.append(_section("Mean actual per predicted-value bin", table=table))
    per_class = curve.get("per_class_auc")
    if per_class:
        table = {"headers": ["class", "AUC"], "rows": list(per_class.items())}
        parts.append(_section("One-vs-rest ROC AUC per class", table=table))
    return parts


def _fmt(value: Any) -> str:
    """A number for a legend."""
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _status(gate: Mapping[str, Any]) -> str:
    """pass / fail / skipped from a gate dict (older records have no `status`)."""
    if gate.get("status"):
        return str(gate["status"])
    return "skipped" if gate.get("skipped") else "pass" if gate.get("passed") else "fail"


def _header(record: Mapping[str, Any]) -> dict[str, Any]:
    """Title and the facts a reviewer checks first: model, decision, failed gates, lineage hashes."""
    candidate = record.get("candidate") or {}
    name = record.get("model_name") or (record.get("promote") or {}).get("model_name") or "model"
    family = candidate.get("family", "unknown family")
    failed = record.get("failed_gates") or []
    scores = record.get("scores") or {}
    metric = record.get("metric")
    rows = [
        ("model", f"{name} ({family})"),
        ("task", record.get("task")),
        ("decision", str(record.get("decision", "unknown"))),
        ("failed gates", ", ".join(map(str, failed)) if failed else "none"),
        ("passed over", _passed_over(record)),
        (f"test {metric}" if metric else "test metric", scores.get("candidate")),
        ("champion's test score", scores.get("champion")),
        ("model hash", candidate.get("model_hash")),
        ("data hash (DVC md5)", record.get("data_hash")),
        ("git commit", record.get("git_commit")),
        ("params hash", record.get("params_hash")),
    ]
    return {"name": name, "rows": [(k, v) for k, v in rows if v is not None]}


def _passed_over(record: Mapping[str, Any]) -> str | None:
    """'stacking (latency), hgb (tied, larger)' for the header; None when nothing was passed over."""
    passed = (record.get("selection") or {}).get("passed_over") or []
    if not passed:
        return None
    return ", ".join(f"{p.get('family')} ({p.get('gate') or 'tied, larger'})" for p in passed)


def _slices(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The metric per slice value, with n and any gap fields the record holds (None: no slices)."""
    slices = record.get("slices") or {}
    columns = slices.get("columns") or {}
    if not columns:
        return None
    tables = []
    for column, entries in columns.items():
        keys = _record_keys(entries)
        first = [k for k in ("value", "n", "metric") if k in keys]
        ordered = first + [k for k in keys if k not in first]
        tables.append({"column": column, "headers": ordered, "rows": [[e.get(k) for k in ordered] for e in entries]})
    return {"metric": record.get("metric"), "min_rows": slices.get("min_rows"), "columns": tables}


SELECTION_COLUMNS = ("rank", "family", "valid_score", "size_bytes", "tied", "status", "reason")
"""The columns of the card's selection table (the record's `selection.ranking` entries)."""


def _selection(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """How the gated candidate was chosen: the ranking with each candidate's status and reason (None: old record)."""
    selection = record.get("selection") or {}
    ranking = selection.get("ranking") or []
    if not ranking:
        return None
    rows = [[entry.get(k) for k in SELECTION_COLUMNS] for entry in ranking]
    screen = ", ".join(map(str, selection.get("screen") or [])) or "none"
    summary = (
        f"chosen: {selection.get('chosen')} (rank {selection.get('chosen_rank')} of {len(ranking)} on valid "
        f"{selection.get('metric')}); ties within {selection.get('tie_tolerance')} x |best valid score| go to "
        f"the smaller model; screening gates (no test labels): {screen}"
    )
    warning = (
        "every candidate failed screening: the top-ranked one was gated so the record shows why it is rejected"
        if selection.get("all_screened_out")
        else None
    )
    return {"summary": summary, "warning": warning, "headers": list(SELECTION_COLUMNS), "rows": rows}


def _gate_view(gate: Mapping[str, Any]) -> dict[str, Any]:
    """A gate as the template shows it (status resolved for older records)."""
    keys = ("name", "value", "threshold", "reason", "details")
    return {"status": _status(gate), **{k: gate.get(k) for k in keys}}


def card_context(record: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template shows, from the gate record: header, selection, gates, curves, slices, gate details."""
    curve = record.get("curves") or {}
    gates = [_gate_view(g) for g in record.get("gates") or []]
    detailed = [g for g in gates if g["details"]]
    behavioural = [g for g in detailed if any(word in str(g["name"] or "") for word in BEHAVIOURAL)]
    title = f"Model card: {record.get('model_name') or (record.get('candidate') or {}).get('family', 'model')}"
    return {
        "title": title,
        "header": _header(record),
        "selection": _selection(record),
        "gates": gates,
        "plots": _plots(curve) if curve else [],
        "nonfinite_rows": curve.get("nonfinite_rows"),
        "slices": _slices(record),
        "behavioural": behavioural,
        "other_details": [g for g in detailed if g not in behavioural],
        "max_depth": MAX_DEPTH,
        "max_list": MAX_LIST,
    }


def render_model_card(record: dict) -> str:
    """Self-contained HTML (inline CSS and base64 PNG plots, no external references) from a gate record."""
    return _environment().get_template(TEMPLATE).render(card_context(record))
