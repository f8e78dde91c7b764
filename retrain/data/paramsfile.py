"""Render a complete, commented params file from a table's profile (`retrain init`).

Every threshold written is either relative to what the profile measured (row counts, class shares, null
shares, ranges, the target's spread, a reference model's latency on this machine) or a documented generic
default; none is a number measured on Adult. docs/init.md lists each one and how it is derived.

The text comes from the Jinja2 template `templates/params.yaml.j2`; every value is rendered YAML-safe
(`yaml_key`, `yaml_str`, `yaml_num`), and the result is loaded back through `retrain.config.Params` before
it is returned, so a file that `load_params` would refuse is never written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from retrain.config import TASK_DEFAULTS, Params, model_name_for
from retrain.data.profile import LOOK_LEVEL, MAX_DOMAIN, ColumnProfile, Profile
from retrain.errors import ConfigError

TEMPLATE = "params.yaml.j2"
RESOURCES = ("templates/params.yaml.j2",)
"""Files this module reads at run time (engine/codedeps.py counts them as its code)."""

VALID_SIZE = TEST_SIZE = 0.2
"""Shares of the main source held out for validation and (carved) test."""
RANGE_MARGIN = 0.10
"""Numeric min / max are widened by this share of the observed span (never below 0 if nothing was)."""
NULL_MARGIN = 0.01
"""max_null_fraction = observed share + max(this, half the observed share)."""
UNSEEN_FRACTION = 0.01
"""max_unseen_fraction of a category column with a domain: share of rows with a value never seen."""
MAX_SLICE_VALUES = 10
"""Category columns with 2 to this many values can be slices; numeric protected ones with more are banded."""
EXTRA_SLICES = 3
"""Low-cardinality category columns added to the protected ones as slices, at most."""
MIN_GROUP_ROWS, MAX_GROUP_ROWS = 30, 200
"""Slices / fairness groups: min_rows = expected test rows / 50, clipped to [30, 200]."""
LATENCY_FACTOR, LATENCY_FLOOR_MS = 100.0, 50.0
"""max_p95_ms = max(LATENCY_FACTOR x the reference model's p50, LATENCY_FLOOR_MS). p50 measures the machine, not
the moment (see retrain/evaluation/reference.py). Measured against the reference's p50 (~0.3-0.45 ms on the
development machine): a tuned LightGBM serves at a p95 of ~1.5-3x it idle and up to ~30x on a busy machine;
HistGradientBoosting and the logistic-regression pipeline (pandas and OpenMP overhead on every call) at ~25x idle
and 60-110x busy (logreg 23 ms, hgb 50 ms p95 at a load of 6 on 2 cores). The floor is LatencyGate's own default,
so a fast machine does not get a budget the default families miss whenever it is busy; a slower machine (a
larger p50) gets a proportionally larger one."""
MAX_SIZE_MB = 50.0
"""Generic cap on the model directory (MB)."""
CHAMPION_RATIO = 3.0
"""p95 and size may be at most this many times the champion's."""
FAIRNESS_BOUND = 0.25
"""Generic loose demographic-parity / equalized-odds bound: tighten it to your policy."""

KIND_TEXT = {
    "file": "a file",
    "glob": "a glob of batch files, stacked in name order",
    "sql": "a SQLAlchemy URL read with `query`",
}
"""How the template names the source kind."""

BOUNDED = {
    # metric: (baseline margin, champion tolerance, slice max_gap, slice champion_tolerance)
    "roc_auc": (0.01, 0.005, 0.15, 0.05),
    "roc_auc_ovr": (0.01, 0.005, 0.15, 0.05),
    "accuracy": (0.01, 0.005, 0.10, 0.05),
    "balanced_accuracy": (0.01, 0.005, 0.15, 0.05),
    "log_loss": (0.02, 0.005, 0.20, 0.05),
    "r2": (0.02, 0.005, 0.25, 0.05),
}
"""Generic gate numbers per metric, in the metric's own units. The slice gap leaves room for sampling noise: a
slice of min_rows rows with few positives has a ROC AUC standard error of ~0.03-0.05, and slicing on a predictive
column lowers the within-slice AUC by itself (a generated Adult policy measured 0.095 on marital-status=Widowed)."""
PER_STD = (0.02, 0.01, 0.25, 0.05)
"""rmse / mae (target units): the same four numbers as shares of the target's standard deviation."""


# --- YAML-safe values ------------------------------------------------------------------------------


def yaml_str(value: str) -> str:
    """A string as a double-quoted YAML scalar (JSON's string syntax is valid YAML): never read as a number."""
    return json.dumps(str(value), ensure_ascii=False)


def yaml_key(value: str) -> str:
    """A mapping key: plain when YAML reads it back as the same string, else double-quoted."""
    text = str(value)
    dumped = yaml.safe_dump(text, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()
    if dumped == text and "#" not in text:
        try:
            if yaml.safe_load(f"{text}: 1") == {text: 1}:
                return text
        except yaml.YAMLError:
            pass
    return yaml_str(text)


def yaml_num(value: float, integer: bool = False, exact: bool = False) -> str:
    """A number YAML reads as a number: whole values without a fraction, others to 6 significant digits (all
    digits with `exact`, for bounds that must not move past the value they were derived from)."""
    number = float(value)
    if integer or (number.is_integer() and abs(number) < 1e15):
        return str(round(number))
    rounded = number if exact else float(f"{number:.6g}")
    if rounded.is_integer() and abs(rounded) < 1e15:
        return str(int(rounded))
    text = repr(rounded)
    return text if "e" not in text else yaml.safe_dump(rounded).removesuffix("\n...\n").strip()


def yaml_list(values: Sequence[str]) -> str:
    """A flow list of double-quoted strings."""
    return "[" + ", ".join(yaml_str(v) for v in values) + "]"


def comment(text: str, limit: int = 160) -> str:
    """Text safe inside a YAML comment: one line, bounded length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def wrapped_list(values: Sequence[str], indent: int, width: int = 110) -> str:
    """A flow list of quoted strings wrapped over lines, continuation lines indented by `indent` spaces."""
    items = [yaml_str(v) for v in values]
    lines, current = [], "["
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "]")
        if len(current) + len(piece) + 1 > width and current != "[":
            lines.append(current.rstrip())
            current = " " * indent
        current += piece + " "
    lines.append(current.rstrip())
    return "\n".join(lines) if items else "[]"


# --- derived numbers -------------------------------------------------------------------------------


def _step(margin: float) -> float:
    """A round step for a bound: the power of ten at or under the margin."""
    return 10.0 ** math.floor(math.log10(margin)) if margin > 0 else 1.0


def numeric_range(column: ColumnProfile) -> tuple[float, float]:
    """Observed min / max widened by RANGE_MARGIN of the span, rounded outward; not below 0 if nothing was."""
    low, high = float(column.minimum or 0.0), float(column.maximum or 0.0)
    margin = RANGE_MARGIN * (high - low) or max(abs(high) * RANGE_MARGIN, 1.0)
    step = _step(margin)
    if column.kind == "int":
        step = max(step, 1.0)
    digits = max(0, -math.floor(math.log10(step)))
    lower = round(math.floor((low - margin) / step) * step, digits)
    upper = round(math.ceil((high + margin) / step) * step, digits)
    if low >= 0:
        lower = max(lower, 0.0)
    return lower, upper


def _round_up(value: float, digits: int = 3) -> float:
    """Round up to `digits` decimals (a bound must never end up under the value it was derived from)."""
    scale = 10**digits
    return math.ceil(value * scale - 1e-9) / scale


def null_bound(observed: float) -> float:
    """max_null_fraction: the observed share plus max(NULL_MARGIN, half of it), at most 1."""
    return min(1.0, _round_up(observed + max(NULL_MARGIN, observed / 2)))


def significant(value: float, digits: int = 2) -> float:
    """A value rounded to `digits` significant digits (band edges, relative thresholds)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def band_edges(values: Any, quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> list[float]:
    """Quartile edges of a numeric column, rounded to 2 significant digits, distinct and increasing."""
    numbers = np.asarray(values, dtype=float)
    numbers = numbers[np.isfinite(numbers)]
    if numbers.size == 0:
        return []
    edges = sorted({significant(float(q)) for q in np.quantile(numbers, quantiles)})
    return [e for e in edges if numbers.min() < e <= numbers.max()]


def expected_test_rows(profile: Profile) -> int:
    """Rows the carved test split will hold: labelled rows x test_size."""
    return max(1, round(profile.labelled_rows * TEST_SIZE))


def group_min_rows(test_rows: int) -> int:
    """Slice / fairness-group size under which a group is reported, not gated: test rows / 50 in [30, 200]."""
    return int(min(MAX_GROUP_ROWS, max(MIN_GROUP_ROWS, test_rows // 50)))


def max_ece(test_rows: int) -> float:
    """max(0.05, 2 / sqrt(test rows)), rounded up to 2 decimals: above the ECE a perfectly calibrated model shows
    from sampling alone (up to ~1.3 / sqrt(n) over 10 evenly filled bins: sqrt(2/pi) x 0.5 x sqrt(10 / n))."""
    return max(0.05, _round_up(2.0 / math.sqrt(max(test_rows, 1)), 2))


def gate_numbers(metric: str, target_std: float | None) -> dict[str, float]:
    """Baseline margin, champion tolerance, slice gap and slice champion tolerance for a metric."""
    if metric in BOUNDED:
        margin, tolerance, gap, slice_tolerance = BOUNDED[metric]
    else:
        std = float(target_std or 0.0) or 1.0
        margin, tolerance, gap, slice_tolerance = (significant(share * std, 3) for share in PER_STD)
    return {"margin": margin, "tolerance": tolerance, "max_gap": gap, "slice_tolerance": slice_tolerance}


def latency_budget(reference: Mapping[str, float] | None) -> float:
    """max_p95_ms: LATENCY_FACTOR x the reference p50, at least LATENCY_FLOOR_MS, rounded up to 1 ms."""
    if not reference:
        return 50.0
    return float(math.ceil(max(LATENCY_FACTOR * float(reference["p50_ms"]), LATENCY_FLOOR_MS)))


# --- choices ---------------------------------------------------------------------------------------


def discrete(column: ColumnProfile) -> bool:
    """Few enough values to slice or group on each value (categories, or numbers with <= MAX_SLICE_VALUES)."""
    return column.distinct <= MAX_SLICE_VALUES if column.numeric else True


def suspicious(column: ColumnProfile, threshold: float = LOOK_LEVEL) -> bool:
    """Its single-feature score is at or above the look level (or the leakage threshold)."""
    return column.score is not None and column.score >= threshold


def choose_slices(profile: Profile) -> tuple[list[str], list[str], dict[str, list[float]]]:
    """(protected slices, extra slices, bands): protected columns that are discrete, up to EXTRA_SLICES more
    category columns with 2..MAX_SLICE_VALUES values (table order), and numeric protected columns banded."""
    protected = [profile.column(c) for c in profile.protected]
    slices = [c.name for c in protected if discrete(c)]
    bands = {c.name: band_edges(profile.frame[c.name]) for c in protected if not discrete(c)}
    bands = {name: edges for name, edges in bands.items() if edges}
    extra = [
        c.name
        for c in profile.features
        if c.kind == "category" and 2 <= c.distinct <= MAX_SLICE_VALUES and c.name not in slices and not suspicious(c)
    ][:EXTRA_SLICES]
    return slices, extra, bands


def choose_heuristic(profile: Profile) -> ColumnProfile | None:
    """The best-scoring single feature that is not suspicious (the heuristic baseline's column)."""
    scored = [c for c in profile.features if c.score is not None and not suspicious(c)]
    return max(scored, key=lambda c: c.score or 0.0) if scored else None


# --- the file --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnBlock:
    """One entry of dataset.columns as YAML lines, with flag lines above it."""

    flags: list[str]
    lines: list[str]


def _observed(column: ColumnProfile) -> str:
    """What was seen in a column, for its comment."""
    nulls = f"; {column.null_fraction:.1%} null" if column.null_fraction else ""
    if column.numeric:
        integer = column.kind == "int"
        low, high = yaml_num(column.minimum or 0, integer), yaml_num(column.maximum or 0, integer)
        return f"observed {low} .. {high}, {column.distinct:,} distinct{nulls}"
    if column.values is None:
        return f"{column.distinct:,} distinct values: no domain (validate.domains checks them vs the champion's){nulls}"
    rare = ""
    if column.rarest:
        value, count = column.rarest
        rare = f", rarest {value!r} ({count:,} row{'' if count == 1 else 's'})"
    return f"{column.distinct} values{rare}{nulls}"


def _flags(column: ColumnProfile, profile: Profile) -> list[str]:
    """Comment lines above a column whose single-feature score is suspicious, or whose name says identifier."""
    metric = profile.leakage_metric
    out = []
    if column.score is not None and column.score >= profile.leakage_threshold:
        out.append(
            f"LEAK? {column.name!r} alone scores {metric} {column.score:.4f} >= validate.leakage_threshold "
            f"{profile.leakage_threshold}: the data gate will block the run while it is a feature."
        )
        out.append("If it is a copy of the label or known only after it, add it to dataset.exclude.")
    elif column.score is not None and column.score >= LOOK_LEVEL:
        out.append(
            f"LOOK: {column.name!r} alone scores {metric} {column.score:.4f} (>= {LOOK_LEVEL}): check that it is "
            "known at prediction time; if it leaks the label, add it to dataset.exclude."
        )
    if column.id_name:
        out.append(
            f"{column.name!r} is named like an identifier: if rows sharing it belong together, pass "
            f"--group-column {column.name}; if it carries no signal, exclude it."
        )
    return [comment(line, 200) for line in out]


def column_block(column: ColumnProfile, profile: Profile) -> ColumnBlock:
    """The YAML of one feature column: type, range or domain, null and unseen bounds, and a comment."""
    key = yaml_key(column.name)
    nulls = null_bound(column.null_fraction)
    score = f"; alone {profile.leakage_metric} {column.score:.3f}" if column.score is not None else ""
    note = comment(_observed(column) + score)
    if column.numeric:
        low, high = numeric_range(column)
        integer = column.kind == "int"
        body = f"{{type: {column.kind}, min: {yaml_num(low, integer, True)}, max: {yaml_num(high, integer, True)}, "
        body += f"max_null_fraction: {yaml_num(nulls)}}}"
        return ColumnBlock(_flags(column, profile), [f"{key}: {body}  # {note}"])
    if column.values is None:
        return ColumnBlock(
            _flags(column, profile), [f"{key}: {{type: category, max_null_fraction: {yaml_num(nulls)}}}  # {note}"]
        )
    domain = wrapped_list(column.values, indent=14)
    lines = [
        f"{key}:  # {note}",
        "  type: category",
        f"  domain: {domain}",
        f"  max_unseen_fraction: {yaml_num(UNSEEN_FRACTION)}",
        f"  max_null_fraction: {yaml_num(nulls)}",
    ]
    return ColumnBlock(_flags(column, profile), lines)


def _rare_label(counts: Mapping[str, int] | None, below: int = 20) -> tuple[str, int] | None:
    """The rarest label (quoted) when it has fewer than `below` rows (worth a warning in the file), else None."""
    if not counts:
        return None
    label = min(counts, key=lambda k: counts[k])
    return (yaml_str(label), counts[label]) if counts[label] < below else None


def _environment() -> Any:
    """The Jinja2 environment over this module's templates folder (plain text: no HTML escaping)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["c"] = pad
    return env


def pad(text: str, width: int = 28) -> str:
    """`key: value` padded so the comment after it starts at `width` (two spaces when it is longer)."""
    return text.ljust(width) if len(text) < width - 1 else text + "  "


def context(
    profile: Profile,
    *,
    name: str,
    source: str,
    query: str | None,
    latency: Mapping[str, float] | None,
    command: str = "",
) -> dict[str, Any]:
    """Everything the template shows, each value already YAML-safe."""
    target, task = profile.target, profile.target.task
    defaults = TASK_DEFAULTS[task]
    metric = defaults["metric"]
    test_rows = expected_test_rows(profile)
    numbers = gate_numbers(metric, target.std)
    slices, extra, bands = choose_slices(profile)
    protected = [profile.column(c) for c in profile.protected]
    attributes = [c.name for c in protected if discrete(c)]
    heuristic = choose_heuristic(profile)
    classification = task != "regression"
    smallest = target.smallest_class_share
    min_rows = max(1, min(1000, profile.labelled_rows // 2))
    na_note = "; ".join(f"{yaml_str(token)} in {', '.join(columns)}" for token, columns in profile.na_found.items())
    min_group = group_min_rows(test_rows)
    std_note = f"target std {target.std:,.6g}" if target.std is not None else ""
    return {
        "command": comment(command, 300),
        "name": yaml_str(name),
        "name_text": comment(name),
        "source": yaml_str(source),
        "kind": profile.kind,
        "query": yaml_str(query) if query else "null",
        "rows": f"{profile.rows:,}",
        "profiled_rows": f"{profile.profiled_rows:,}",
        "sampled": profile.profiled_rows < profile.labelled_rows,
        "task": task,
        "task_note": comment(
            f"inferred: {target.task_reason}; pass --task to choose" if target.inferred else f"{target.task_reason}"
        ),
        "target": yaml_str(target.name),
        "target_note": comment(
            f"{target.minimum:,.6g} .. {target.maximum:,.6g}, mean {target.mean:,.6g}, {std_note}"
            if not classification
            else ", ".join(f"{label}: {count:,}" for label, count in (target.counts or {}).items())
        ),
        "labels": yaml_list(target.labels) if target.labels else "null",
        "few_rows_label": (
            min(target.counts.items(), key=lambda kv: kv[1])
            if target.counts and min(target.counts.values()) < 20
            else None
        ),
        "positive": yaml_str(target.positive_label) if target.positive_label else "null",
        "positive_note": comment(target.positive_reason or ""),
        "exclude": [(yaml_str(c.name), comment(c.exclude_reason or "")) for c in profile.excluded],
        "protected": yaml_list(profile.protected),
        "slices": yaml_list([*slices, *extra]),
        "extra_slices": extra,
        "banded": list(bands),
        "columns": [column_block(c, profile) for c in profile.features],
        "flagged": [c.name for c in profile.flagged()],
        "leakage_metric": profile.leakage_metric,
        "leakage_threshold": yaml_num(profile.leakage_threshold),
        "leakage_skipped": comment(profile.leakage_skipped) if profile.leakage_skipped else None,
        "look_level": LOOK_LEVEL,
        "max_domain": MAX_DOMAIN,
        "na_values": yaml_list(profile.na_values),
        "na_note": comment(na_note, 200),
        "delimiter": yaml_str(profile.delimiter),
        "label_suffix": yaml_str(profile.label_suffix),
        "kind_text": KIND_TEXT[profile.kind],
        "drop_missing_target": "true" if target.missing else "false",
        "missing_target": f"{target.missing:,}",
        "max_bytes": int(max(200_000_000, 10 * profile.data_bytes)),
        "data_bytes": f"{profile.data_bytes:,}",
        "min_rows": min_rows,
        "labelled_rows": f"{profile.labelled_rows:,}",
        "duplicates": f"{profile.duplicate_fraction:.3%}",
        "max_duplicate_fraction": yaml_num(min(1.0, max(0.01, _round_up(2 * profile.duplicate_fraction)))),
        "min_class_fraction": yaml_num(max(0.001, math.floor(smallest / 2 * 1000) / 1000)) if smallest else "0.01",
        "smallest_class": f"{smallest:.2%}" if smallest else "",
        "split_column": profile.split_column,
        "split_column_name": yaml_str(profile.split_column.name) if profile.split_column else "null",
        "split_note": comment(profile.split_column.note) if profile.split_column else "",
        "baselines": yaml_list([*defaults["baselines"], *(["heuristic"] if heuristic else [])]).replace('"', ""),
        "heuristic": yaml_str(heuristic.name) if heuristic else None,
        "heuristic_note": (
            comment(f"best single feature that is not suspicious: {profile.leakage_metric} {heuristic.score:.3f} alone")
            if heuristic and heuristic.score is not None
            else comment(f"no single-feature scores ({profile.leakage_skipped})")
        ),
        "families": "[" + ", ".join(defaults["families"]) + "]",
        "metric": metric,
        "std_note": std_note,
        "relative": metric not in BOUNDED,
        "margin": yaml_num(numbers["margin"]),
        "tolerance": yaml_num(numbers["tolerance"]),
        "max_gap": yaml_num(numbers["max_gap"]),
        "slice_tolerance": yaml_num(numbers["slice_tolerance"]),
        "test_rows": f"{test_rows:,}",
        "group_min_rows": min_group,
        "bands": {yaml_key(name): "[" + ", ".join(yaml_num(e) for e in edges) + "]" for name, edges in bands.items()},
        "attributes": yaml_list(attributes),
        "attributes_differ": attributes != list(profile.protected),
        "has_attributes": bool(attributes),
        "classification": classification,
        "binary": task == "binary",
        "max_ece": yaml_num(max_ece(test_rows)),
        "fairness_bound": yaml_num(FAIRNESS_BOUND),
        "latency": latency,
        "max_p95_ms": yaml_num(latency_budget(latency)),
        "latency_factor": yaml_num(LATENCY_FACTOR),
        "latency_floor": yaml_num(LATENCY_FLOOR_MS),
        "max_size_mb": yaml_num(MAX_SIZE_MB),
        "champion_ratio": f"{CHAMPION_RATIO:.1f}",
        "experiment": yaml_str(f"retrain-{model_name_for(name)}"),
        "model_name": yaml_str(model_name_for(name)),
    }


def check_params_text(text: str, where: str = "generated params") -> Params:
    """Load rendered params text exactly as `load_params` would; a failure is a ConfigError naming the keys."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from exc


def render_params(
    profile: Profile,
    *,
    name: str,
    source: str,
    query: str | None = None,
    latency: Mapping[str, float] | None = None,
    command: str = "",
) -> str:
    """The params file text for a profiled table, checked to load (see `check_params_text`)."""
    values = context(profile, name=name, source=source, query=query, latency=latency, command=command)
    text = _environment().get_template(TEMPLATE).render(**values)
    check_params_text(text)
    return text
