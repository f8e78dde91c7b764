"""Our fairness gate (retrain/evaluation/fairness.py) against fairlearn's metrics, on UCI Adult.

Needs a THROWAWAY venv with fairlearn: fairlearn is not a project dependency and must not be installed
into .venv. Set it up once and run the script with that interpreter and the project on PYTHONPATH:

    python3.11 -m venv .venv-fairlearn
    .venv-fairlearn/bin/pip install fairlearn pandas scikit-learn lightgbm pyarrow pyyaml pydantic
    PYTHONPATH=. .venv-fairlearn/bin/python benchmarks/fairlearn_compare.py [--params params.yaml] [--trees 200]

A seeded LightGBM (native API, pandas categoricals, two threads) is trained on the params file's `source`
(Adult train) and scores its `test_source` (Adult test); on those same predictions it compares, per
protected attribute (`dataset.protected`): per-group selection rate / TPR / FPR from our `group_table`
vs fairlearn's MetricFrame, and our demographic-parity and equalized-odds differences vs fairlearn's
demographic_parity_difference / equalized_odds_difference, (a) on every group and (b) on the groups our
gate scores (>= `evaluate.gates.fairness.min_rows` test rows). It also times both computations, the
import of fairlearn.metrics in fresh interpreters (cold, and after numpy/pandas/scipy/sklearn are already
imported, as in the evaluate stage), and lists what fairlearn would add to requirements.lock. Prints a
markdown report on stdout (docs/gates.md, "Fairness metrics vs fairlearn", quotes it).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import lightgbm as lgb
import numpy as np
import pandas as pd

from retrain.config import load_params
from retrain.evaluation import fairness
from retrain.evaluation.fairness import fairness_gate, group_table

try:
    import fairlearn
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
except ImportError as exc:  # the whole point of the script: fail loudly, with the fix
    raise SystemExit(
        f"benchmarks/fairlearn_compare.py needs fairlearn, which is not a project dependency ({exc}).\n"
        "Run it from a throwaway venv, never the project's .venv:\n"
        "  python3.11 -m venv .venv-fairlearn\n"
        "  .venv-fairlearn/bin/pip install fairlearn pandas scikit-learn lightgbm pyarrow pyyaml pydantic\n"
        "  PYTHONPATH=. .venv-fairlearn/bin/python benchmarks/fairlearn_compare.py"
    ) from exc

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.fairlearn_compare")
IMPORT_RUNS = 5
"""Fresh interpreters per import-time measurement (the median is reported)."""


def read_adult(path: Path, na_values: list[str], label_suffix: str, target: str) -> pd.DataFrame:
    """An Adult CSV as ingest reads it: '?' is missing, the test file's label suffix ('.') stripped."""
    frame = pd.read_csv(path, na_values=na_values, skipinitialspace=True)
    frame[target] = frame[target].astype(str).str.removesuffix(label_suffix)
    return frame


def predictions(params_file: Path, trees: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, Any]:
    """(test frame, 0/1 test labels, P(positive) on test, params) of a seeded LightGBM on Adult."""
    params = load_params(params_file)
    dataset, ingest = params.dataset, params.ingest
    train = read_adult(ROOT / ingest.source, list(ingest.na_values), ingest.label_suffix, dataset.target)
    test = read_adult(ROOT / ingest.test_source, list(ingest.na_values), ingest.label_suffix, dataset.target)
    features = [c for c in train.columns if c != dataset.target and c not in dataset.exclude]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    for column in categorical:
        kinds = pd.CategoricalDtype(sorted(train[column].dropna().astype(str).unique()))
        train[column] = train[column].astype(str).where(train[column].notna()).astype(kinds)
        test[column] = test[column].astype(str).where(test[column].notna()).astype(kinds)
    positive = str(dataset.positive_label)
    y_train = (train[dataset.target] == positive).to_numpy().astype(int)
    y_test = (test[dataset.target] == positive).to_numpy().astype(int)
    model = lgb.LGBMClassifier(
        n_estimators=trees, learning_rate=0.05, num_leaves=31, random_state=seed, n_jobs=2, verbose=-1
    )
    model.fit(train[features], y_train)
    return test, y_test, model.predict_proba(test[features])[:, 1], params


def _timed(fn: Any, repeats: int = 3) -> tuple[Any, float]:
    """fn()'s result and the median wall seconds of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return result, statistics.median(seconds)


def compare_attribute(
    attribute: str, group: pd.Series, y: np.ndarray, predicted: np.ndarray, min_rows: int
) -> dict[str, Any]:
    """Our group table and differences vs fairlearn's, on every group and on the gated groups only."""
    ours, ours_seconds = _timed(lambda: _ours(y, predicted, group, min_rows))
    sensitive = group.astype(str)

    def theirs_all() -> tuple[pd.DataFrame, float, float]:
        frame = MetricFrame(
            metrics={
                "rows": count,
                "selection_rate": selection_rate,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
            },
            y_true=y,
            y_pred=predicted,
            sensitive_features=sensitive,
        )
        return (
            frame.by_group,
            demographic_parity_difference(y, predicted, sensitive_features=sensitive),
            equalized_odds_difference(y, predicted, sensitive_features=sensitive),
        )

    (theirs, dp_all, eo_all), fairlearn_seconds = _timed(theirs_all)
    rows = []
    for name, row in ours.items():
        for key in ("rows", "selection_rate", "tpr", "fpr"):
            rows.append((name, key, row[key], float(theirs.loc[name, key])))
    gated = [g for g, row in ours.items() if row["gated"]]
    keep = sensitive.isin(gated).to_numpy()
    gate_dp = demographic_parity_difference(y[keep], predicted[keep], sensitive_features=sensitive[keep])
    gate_eo = equalized_odds_difference(y[keep], predicted[keep], sensitive_features=sensitive[keep])
    everyone = {g: {**r, "gated": True} for g, r in ours.items()}
    with mock.patch.object(fairness, "_json", lambda v: float(v) if np.isfinite(v) else None):
        raw = group_table(y, predicted, group, min_rows)  # our rates before the record's 6-decimal rounding
    raw_diff = max(
        abs(raw[g][key] - float(theirs.loc[g, key])) for g in raw for key in ("selection_rate", "tpr", "fpr")
    )
    return {
        "groups": rows,
        "all": {"dp": (_range(everyone, "selection_rate"), dp_all), "eo": (_eo(everyone), eo_all)},
        "gated": {"dp": (None, gate_dp), "eo": (None, gate_eo)},
        "gated_groups": gated,
        "raw_diff": raw_diff,
        "seconds": (ours_seconds, fairlearn_seconds),
    }


def _ours(y: np.ndarray, predicted: np.ndarray, group: pd.Series, min_rows: int) -> dict[str, dict[str, Any]]:
    """Our group table plus the two differences (what the gate computes per attribute)."""
    table = group_table(y, predicted, group, min_rows)
    _range(table, "selection_rate"), _eo(table)
    return table


def edge_cases() -> list[str]:
    """How fairlearn treats the two cases our gate defines: a missing attribute value, a group with no positives."""
    y, predicted = np.array([1, 0, 1, 0, 1, 1, 0, 0]), np.array([1, 1, 0, 0, 1, 1, 1, 0])
    group = pd.Series(["F", "F", "F", "F", "M", "M", "M", None])
    ours_missing = {g: r["rows"] for g, r in group_table(y, predicted, group, 1).items()}
    try:
        MetricFrame(metrics=count, y_true=y, y_pred=predicted, sensitive_features=group)
        theirs_missing = "accepted"
    except ValueError as exc:
        theirs_missing = f"ValueError: {str(exc).split('.')[0]}"
    y2, p2, g2 = np.array([0, 0, 1, 1]), np.array([1, 0, 1, 0]), pd.Series(["a", "a", "b", "b"])
    ours_tpr = {g: r["tpr"] for g, r in group_table(y2, p2, g2, 1).items()}
    theirs_tpr = MetricFrame(metrics=true_positive_rate, y_true=y2, y_pred=p2, sensitive_features=g2).by_group
    theirs_eo = equalized_odds_difference(y2, p2, sensitive_features=g2)
    ours_eo = _eo(group_table(y2, p2, g2, 1))
    return [
        f"- a missing attribute value: ours counts the row in no group ({ours_missing}); fairlearn: {theirs_missing}",
        f"- a group with no positive rows: ours TPR {ours_tpr} (undefined, left out of the range, EO {ours_eo:.2f}); "
        f"fairlearn TPR {theirs_tpr.to_dict()} (0.0, no warning; EO {theirs_eo:.2f})",
    ]


def _range(table: dict[str, dict[str, Any]], key: str) -> float:
    """max - min of one per-group rate of our table (defined groups only)."""
    values = [row[key] for row in table.values() if row[key] is not None]
    return max(values) - min(values) if len(values) > 1 else 0.0


def _eo(table: dict[str, dict[str, Any]]) -> float:
    """Our equalized-odds difference: the larger of the TPR range and the FPR range."""
    return max(_range(table, "tpr"), _range(table, "fpr"))


def import_seconds(preload: str) -> float:
    """Median wall seconds of `import fairlearn.metrics` in fresh interpreters after `preload` is imported."""
    code = f"import time\n{preload}\nt = time.perf_counter()\nimport fairlearn.metrics\nprint(time.perf_counter() - t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(IMPORT_RUNS)]
    return statistics.median(runs)


def lock_additions(lock: Path) -> list[tuple[str, str, str]]:
    """(package, requirement, status vs requirements.lock) for fairlearn and each of its dependencies."""
    pinned = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", lock.read_text(), flags=re.MULTILINE))
    pinned = {name.lower().replace("_", "-"): version for name, version in pinned.items()}
    out = [("fairlearn", fairlearn.__version__, pinned.get("fairlearn", "NEW: not in the lock"))]
    for requirement in md.requires("fairlearn") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        out.append((name, requirement, f"locked {pinned[name]}" if name in pinned else "NEW: not in the lock"))
    return out


def dist_size_mb(name: str) -> float:
    """Installed size of a distribution's files (MB)."""
    files = md.distribution(name).files or []
    return sum((f.locate().stat().st_size for f in files if Path(f.locate()).is_file()), 0) / 2**20


def main() -> int:
    """Train, compare, time, and print the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (dataset, ingest, fairness gate)")
    parser.add_argument("--trees", type=int, default=200, help="LightGBM rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    test, y, p, params = predictions(ROOT / args.params, args.trees, args.seed)
    cfg = params.evaluate.gates.fairness
    attributes = list(cfg.attributes or params.dataset.protected)
    predicted = (p >= cfg.threshold).astype(np.int64)
    gate = fairness_gate(y, p, {a: test[a] for a in attributes}, task="binary", cfg=cfg)
    logger.info("our gate: %s", gate.reason)
    out = [
        f"fairlearn {fairlearn.__version__}, LightGBM {args.trees} rounds seed {args.seed} on {len(test)} Adult test "
        f"rows, threshold {cfg.threshold}, min_rows {cfg.min_rows}",
        "",
        "| attribute | group | metric | ours | fairlearn | abs diff |",
        "|---|---|---|---|---|---|",
    ]
    worst, raw_worst, summary = 0.0, 0.0, []
    for attribute in attributes:
        found = compare_attribute(attribute, test[attribute], y, predicted, cfg.min_rows)
        for group, key, mine, theirs in found["groups"]:
            diff = abs((mine if mine is not None else np.nan) - theirs)
            worst = max(worst, 0.0 if np.isnan(diff) else diff)
            shown = "-" if mine is None else (f"{mine}" if key == "rows" else f"{mine:.6f}")
            out.append(f"| {attribute} | {group} | {key} | {shown} | {theirs:.6f} | {diff:.1e} |")
        gate_entry = gate.details["attributes"][attribute]
        for scope in ("all", "gated"):
            for metric, key in (("dp", "demographic_parity_difference"), ("eo", "equalized_odds_difference")):
                mine, theirs = found[scope][metric]
                if scope == "gated":
                    mine = gate_entry.get(key)
                diff = abs(mine - theirs)
                worst = max(worst, diff)
                summary.append(f"| {attribute} | {scope} | {metric.upper()} | {mine:.6f} | {theirs:.6f} | {diff:.1e} |")
        raw_worst = max(raw_worst, found["raw_diff"])
        ours_s, theirs_s = found["seconds"]
        summary.append(
            f"| {attribute} | time | group rates + DP + EO | {ours_s * 1e3:.2f} ms | {theirs_s * 1e3:.2f} ms | |"
        )
    out += ["", "| attribute | groups | difference | ours | fairlearn | abs diff |", "|---|---|---|---|---|---|"]
    out += summary
    out += [
        "",
        f"max abs difference over every value above: {worst:.2e} (our values are the gate record's, rounded to 6 "
        f"decimals); before that rounding, max abs difference of the group rates: {raw_worst:.2e}",
        "",
        "Edge cases our gate defines:",
        "",
        *edge_cases(),
        "",
    ]
    cold = import_seconds("pass")
    warm = import_seconds("import numpy, pandas, scipy.stats, sklearn.metrics")
    out += [
        "times: median of 3 calls per attribute (ours: group_table + differences; fairlearn: MetricFrame + "
        "demographic_parity_difference + equalized_odds_difference)",
        f"import fairlearn.metrics (median of {IMPORT_RUNS} fresh interpreters): cold {cold:.3f} s; after numpy, "
        f"pandas, scipy.stats and sklearn.metrics are imported {warm:.3f} s",
        f"installed size: fairlearn {dist_size_mb('fairlearn'):.1f} MB, narwhals {dist_size_mb('narwhals'):.1f} MB",
        "",
        "| package | requirement | requirements.lock |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {req} | {status} |" for name, req, status in lock_additions(ROOT / "requirements.lock")]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
