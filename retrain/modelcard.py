"""The model card: one self-contained HTML page rendered from the gate record alone.

`curves` turns test labels and scores into small JSON-able curves that the gate record keeps
(`record["curves"]`), so the card can be re-rendered later from the record without the model or data.
`render_model_card` draws them with matplotlib (Agg, inline base64 PNG) next to the gate table, the slice
table and the behavioural gates' details. The page references nothing outside itself (no scripts, fonts,
stylesheets or images over the network), and every section is optional: a regression has no ROC, an
old record has no curves, a skipped gate has no details.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

MAX_POINTS = 200
"""Each curve is downsampled to at most this many points (the record stays small)."""
BEHAVIOURAL = ("perturbation", "invariance", "directional", "fairness")
"""Gates whose details form the card's behavioural section (matched as substrings of the gate name)."""


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
    """Equal-width bins on [0, 1]: mean predicted probability vs observed frequency and count (empty bins dropped)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    out: dict[str, list] = {"mean_predicted": [], "fraction_positive": [], "count": []}
    for b in range(bins):
        mask = which == b
        if mask.any():
            out["mean_predicted"].append(_num(confidence[mask].mean()))
            out["fraction_positive"].append(_num(hit[mask].mean()))
            out["count"].append(int(mask.sum()))
    return out


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

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em} td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:left;vertical-align:top} th{background:#f4f4f4}
.pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:700} .skipped{color:#777}
.promote{background:#dafbe1;padding:.1em .5em} .reject{background:#ffebe9;padding:.1em .5em}
.meta td:first-child{font-weight:600} img{max-width:100%} code,pre{font-size:.88em}
details{margin:.4em 0} .muted{color:#777}
"""


def _e(value: Any) -> str:
    """HTML-escaped text of any value (floats to 4 significant digits, None as a dash)."""
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _png(fig: Any) -> str:
    """An <img> holding the figure as an inline base64 PNG."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


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


def _plots(curve: Mapping[str, Any]) -> str:
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
        parts.append(f"<h3>ROC and precision-recall{_e(suffix)}</h3>{_png(fig)}")
    if cal and "fraction_positive" in cal:
        fig, (ax,) = _figure(1)
        x, y = _points(cal.get("mean_predicted")), _points(cal.get("fraction_positive"))
        ax.plot([0, 1], [0, 1], ls="--", c="#999", lw=1)
        ax.plot(x, y, marker="o")
        what = "top-class probability vs accuracy" if curve.get("task") == "multiclass" else "P(positive)"
        ax.set(xlabel="mean predicted", ylabel="observed frequency", title=f"calibration ({what})")
        table = _table(
            ["mean predicted", "observed", "rows"],
            list(
                zip(cal.get("mean_predicted", []), cal.get("fraction_positive", []), cal.get("count", []), strict=False)
            ),
        )
        parts.append(f"<h3>Calibration</h3>{_png(fig)}<details><summary>bins</summary>{table}</details>")
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
        parts.append(f"<h3>Residuals</h3>{_png(fig)}")
    if cal and "mean_actual" in cal:
        table = _table(
            ["mean predicted", "mean actual", "rows"],
            list(zip(cal.get("mean_predicted", []), cal.get("mean_actual", []), cal.get("count", []), strict=False)),
        )
        parts.append(f"<h3>Mean actual per predicted-value bin</h3>{table}")
    per_class = curve.get("per_class_auc")
    if per_class:
        parts.append("<h3>One-vs-rest ROC AUC per class</h3>" + _table(["class", "AUC"], list(per_class.items())))
    return "".join(parts)


def _fmt(value: Any) -> str:
    """A number for a legend."""
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    """An HTML table; columns listed in `raw` hold trusted HTML, everything else is escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if i in raw else _e(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _value(value: Any, depth: int = 0) -> str:
    """Any JSON value as HTML: dicts as two-column tables, lists of dicts as tables, the rest escaped."""
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">(none)</span>'
        if depth >= 3:
            return f"<code>{_e(json.dumps(value, default=str)[:400])}</code>"
        return _table(["", ""], [(_e(k), _value(v, depth + 1)) for k, v in value.items()], raw=(0, 1))
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value) and depth < 3:
        keys = list(dict.fromkeys(k for v in value for k in v))
        return _table(keys, [[_value(v.get(k), depth + 1) for k in keys] for v in value], raw=tuple(range(len(keys))))
    if isinstance(value, list):
        text = ", ".join(_e(v) for v in value[:50])
        return text + (f" &hellip; (+{len(value) - 50})" if len(value) > 50 else "")
    return _e(value)


def _status(gate: Mapping[str, Any]) -> str:
    """pass / fail / skipped from a gate dict (older records have no `status`)."""
    if gate.get("status"):
        return str(gate["status"])
    return "skipped" if gate.get("skipped") else "pass" if gate.get("passed") else "fail"


def _header(record: Mapping[str, Any]) -> str:
    """Title and the facts a reviewer checks first: model, decision, failed gates, lineage hashes."""
    candidate = record.get("candidate") or {}
    name = record.get("model_name") or (record.get("promote") or {}).get("model_name") or "model"
    family = candidate.get("family", "unknown family")
    decision = str(record.get("decision", "unknown"))
    failed = record.get("failed_gates") or []
    scores = record.get("scores") or {}
    metric = record.get("metric")
    rows = [
        ("model", f"{name} ({family})"),
        ("task", record.get("task")),
        ("decision", f'<span class="{_e(decision)}">{_e(decision)}</span>'),
        ("failed gates", ", ".join(map(str, failed)) if failed else "none"),
        (f"test {metric}" if metric else "test metric", scores.get("candidate")),
        ("champion's test score", scores.get("champion")),
        ("model hash", candidate.get("model_hash")),
        ("data hash (DVC md5)", record.get("data_hash")),
        ("git commit", record.get("git_commit")),
        ("params hash", record.get("params_hash")),
    ]
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{v if k == 'decision' else _e(v)}</td></tr>" for k, v in rows if v is not None
    )
    return f"<h1>Model card: {_e(name)}</h1><table class=meta>{body}</table>"


def _gates(record: Mapping[str, Any]) -> str:
    """The gate table: name, status, value, threshold, reason."""
    gates = record.get("gates") or []
    if not gates:
        return '<h2>Gates</h2><p class="muted">no gate results in this record</p>'
    rows = [
        (
            _e(g.get("name")),
            f'<span class="{_e(_status(g))}">{_e(_status(g))}</span>',
            _e(g.get("value")),
            _e(g.get("threshold")),
            _e(g.get("reason")),
        )
        for g in gates
    ]
    return "<h2>Gates</h2>" + _table(["gate", "status", "value", "threshold", "reason"], rows, raw=(0, 1, 2, 3, 4))


def _slices(record: Mapping[str, Any]) -> str:
    """The metric per slice value, with n and any gap fields the record holds."""
    slices = record.get("slices") or {}
    columns = slices.get("columns") or {}
    if not columns:
        return ""
    parts = [
        f"<h2>Slices</h2><p>metric {_e(record.get('metric'))}; values with fewer than "
        f"{_e(slices.get('min_rows'))} test rows are listed but not scored</p>"
    ]
    for column, entries in columns.items():
        keys = list(dict.fromkeys(k for e in entries for k in e))
        ordered = [k for k in ("value", "n", "metric") if k in keys] + [
            k for k in keys if k not in ("value", "n", "metric")
        ]
        parts.append(f"<h3>{_e(column)}</h3>" + _table(ordered, [[e.get(k) for k in ordered] for e in entries]))
    return "".join(parts)


def _behaviour(record: Mapping[str, Any]) -> str:
    """Details of the perturbation, invariance, directional and fairness gates, then any other gate's details."""
    gates = [g for g in record.get("gates") or [] if g.get("details")]
    behavioural = [g for g in gates if any(word in str(g.get("name", "")) for word in BEHAVIOURAL)]
    others = [g for g in gates if g not in behavioural]
    parts = []
    if behavioural:
        parts.append("<h2>Behavioural tests</h2>")
        for g in behavioural:
            parts.append(
                f'<h3>{_e(g.get("name"))}: <span class="{_e(_status(g))}">{_e(_status(g))}</span></h3>'
                f"<p>{_e(g.get('reason'))}</p>{_value(g['details'])}"
            )
    if others:
        parts.append("<h2>Other gate details</h2>")
        for g in others:
            parts.append(
                f"<details><summary>{_e(g.get('name'))} ({_e(_status(g))})</summary>{_value(g['details'])}</details>"
            )
    return "".join(parts)


def render_model_card(record: dict) -> str:
    """Self-contained HTML (inline CSS and base64 PNG plots, no external references) from a gate record."""
    curve = record.get("curves") or {}
    plots = _plots(curve) if curve else ""
    if curve.get("nonfinite_rows"):
        plots = f'<p class="fail">{_e(curve["nonfinite_rows"])} test rows had non-finite scores (left out)</p>' + plots
    sections = [
        _header(record),
        _gates(record),
        f"<h2>Test-set curves</h2>{plots}"
        if plots
        else '<h2>Test-set curves</h2><p class="muted">no curves in this record</p>',
        _slices(record),
        _behaviour(record),
    ]
    title = _e(f"Model card: {record.get('model_name') or (record.get('candidate') or {}).get('family', 'model')}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
