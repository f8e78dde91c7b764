"""The data gate: a Great Expectations (GX Core 1.x) suite built from the schema (and, for columns whose schema
leaves a domain or range open, from the champion's training snapshot), plus the table rules GX has no
expectation for (label balance per source, CV feasibility, label leakage, drift), in one report.

Every check, whichever engine ran it, becomes one dict of the same shape (see `Check`), so the JSON report,
the failure message and the HTML page treat them alike. GX is imported lazily: it costs seconds.
"""

from __future__ import annotations

import html
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from retrain.config import DatasetConfig, Params, SplitConfig, ValidateConfig
from retrain.data.datadocs import make_self_contained
from retrain.data.domains import ChampionDomains, ColumnReference, out_of_range, unseen, without_reference
from retrain.data.ingest import SOURCE_COLUMN, main_rows
from retrain.data.leakage import METRICS, LeakageScores, feature_scores, leaks

logger = logging.getLogger(__name__)

TYPE_NAMES: dict[str, list[str]] = {
    "int": ["int64", "int32", "int", "Int64"],
    "float": ["float64", "float32", "float", "Float64", "int64", "int32", "int", "Int64"],
    "category": ["str"],
}
"""dtype names GX reports under pandas 3 for each declared column type."""

INT_WITH_NULLS = ["float64", "Float64"]
"""pandas stores an integer column that has nulls as float; ingest already refused non-whole numbers."""

SUITE_NAME = "data_gate"
DOCS_SITE = "data_gate"
EXAMPLES = 5


class Check(TypedDict, total=False):
    """One evaluated rule, from GX or from the table rules here."""

    rule: str  # GX expectation class name (ExpectColumnValuesToBeBetween) or a table rule (label_balance, ...)
    engine: str  # "gx" or "retrain"
    column: str | None
    success: bool
    blocking: bool  # a failed non-blocking check is a warning (drift or champion domains with action warn)
    reference: str  # champion-domain checks only: DVC md5 of the champion's training snapshot
    expected: str  # the rule in words, with its threshold
    params_key: str  # where the threshold comes from in params.yaml
    observed: Any
    observed_text: str  # what was seen, in words (used in the failure message)
    unexpected_percent: float | None
    unexpected_examples: list[Any] | None
    sources: list[str]  # which sources ("main", "test") the offending rows come from; empty: the whole table
    raised: bool


# --- the GX suite -------------------------------------------------------------------------------------


def expected_columns(dataset: DatasetConfig, extra: tuple[str, ...] = ()) -> list[str]:
    """The snapshot's column set (minus `__source__`): features, target, then split columns that are not features."""
    columns = [*dataset.features, dataset.target]
    return columns + [c for c in extra if c not in columns]


def _meta(params_key: str, rule: str) -> dict[str, str]:
    """Where an expectation's threshold comes from, kept on the expectation (shown in Data Docs)."""
    return {"params_key": params_key, "rule": rule}


def build_suite(
    dataset: DatasetConfig,
    cfg: ValidateConfig,
    extra_columns: tuple[str, ...] = (),
    champion: ChampionDomains | None = None,
    sources: tuple[str, ...] | None = None,
) -> Any:
    """The expectation suite for the schema and table rules; needs an active GX context (see `validate_frame`).

    `sources`: the values of the frame's `__source__` column (None: the frame has none). The column then
    belongs to the column set, and each champion-domain expectation (`champion`) is added once per source
    with a row condition, so its share is that source's own.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    columns = expected_columns(dataset, extra_columns)
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    add = suite.add_expectation
    column_key = "dataset.columns + dataset.target" + (" + split.group_column/time_column" if extra_columns else "")
    column_set = [*columns, SOURCE_COLUMN] if sources is not None else columns
    add(
        gxe.ExpectTableColumnsToMatchSet(
            column_set=column_set, exact_match=True, meta=_meta(column_key, "exact column set")
        )
    )
    add(
        gxe.ExpectTableRowCountToBeBetween(
            min_value=cfg.min_rows,
            max_value=cfg.max_rows,
            meta=_meta("validate.min_rows, validate.max_rows", f"{cfg.min_rows} <= rows <= {cfg.max_rows}"),
        )
    )
    for name, spec in dataset.schema.items():
        key = f"dataset.columns.{name}"
        types = TYPE_NAMES[spec.type] + (INT_WITH_NULLS if spec.type == "int" else [])
        type_meta = _meta(f"{key}.type", f"type {spec.type}")
        if len(types) == 1:  # InTypeList does not match pandas 3's `str` dtype; OfType does
            add(gxe.ExpectColumnValuesToBeOfType(column=name, type_=types[0], meta=type_meta))
        else:
            add(gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=types, meta=type_meta))
        if spec.min is not None or spec.max is not None:
            bounds = ", ".join(f"{k} {v:g}" for k, v in (("min", spec.min), ("max", spec.max)) if v is not None)
            add(
                gxe.ExpectColumnValuesToBeBetween(
                    column=name, min_value=spec.min, max_value=spec.max, meta=_meta(f"{key}.min/max", bounds)
                )
            )
        add(
            gxe.ExpectColumnValuesToNotBeNull(
                column=name,
                mostly=1.0 - spec.max_null_fraction,
                meta=_meta(f"{key}.max_null_fraction", f"at most {spec.max_null_fraction:.2%} null"),
            )
        )
        if spec.domain is not None:
            add(
                gxe.ExpectColumnValuesToBeInSet(
                    column=name,
                    value_set=list(spec.domain),
                    mostly=1.0 - spec.max_unseen_fraction,
                    meta=_meta(
                        f"{key}.domain, {key}.max_unseen_fraction",
                        f"values in the domain, at most {spec.max_unseen_fraction:.2%} unseen (nulls not counted)",
                    ),
                )
            )
        reference = champion.columns.get(name) if champion is not None and champion.active else None
        if reference is not None:
            for source in sources if sources is not None else (None,):
                add(_champion_expectation(name, reference, champion, cfg, source))
    add(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=columns,
            mostly=1.0 - cfg.max_duplicate_fraction,
            ignore_row_if="never",  # rows with nulls are compared too (null equals null)
            meta=_meta(
                "validate.max_duplicate_fraction",
                f"at most {cfg.max_duplicate_fraction:.2%} of rows duplicated (every copy counts)",
            ),
        )
    )
    target = dataset.target
    add(gxe.ExpectColumnValuesToNotBeNull(column=target, meta=_meta("dataset.target", "label never null")))
    if dataset.is_classification:
        labels = list(dataset.labels or ())
        add(
            gxe.ExpectColumnValuesToBeInSet(
                column=target, value_set=labels, meta=_meta("dataset.labels", f"label in {labels}")
            )
        )
    else:
        add(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=target, type_list=TYPE_NAMES["float"], meta=_meta("dataset.task", "numeric target (regression)")
            )
        )
        add(
            gxe.ExpectColumnValuesToBeBetween(
                column=target,
                min_value=-sys.float_info.max,
                max_value=sys.float_info.max,
                meta=_meta("dataset.task", "finite target (regression)"),
            )
        )
    return suite


def _champion_expectation(
    column: str, reference: ColumnReference, champion: ChampionDomains, cfg: ValidateConfig, source: str | None
) -> Any:
    """One column's champion domain (categories) or range (numbers) as a GX expectation with `mostly`.

    Its meta names the rule ("champion domain ..."), the reference md5, the source its row condition selects,
    and whether a failure blocks (action block) or warns (action warn); its `notes` (shown in Data Docs) say
    the same in words.
    """
    import great_expectations.expectations as gxe

    domains = cfg.domains
    where = f"{source} rows" if source else "all rows"
    snapshot = "the champion's training snapshot"  # its md5: meta `reference`, and the failure's observed text
    condition = {"row_condition": f'{SOURCE_COLUMN}=="{source}"', "condition_parser": "pandas"} if source else {}
    meta: dict[str, Any] = {"reference": champion.reference, "blocking": champion.action == "block"}
    if source:
        meta["source"] = source
    action = f"action {champion.action}"
    if reference.kind == "category":
        meta |= _meta(
            f"validate.domains.max_unseen_fraction ({action}; dataset.columns.{column} declares no domain)",
            f"champion domain: values seen in {snapshot}, at most {domains.max_unseen_fraction:.2%} unseen in the "
            f"{where} (nulls not counted)",
        )
        return gxe.ExpectColumnValuesToBeInSet(
            column=column,
            value_set=list(reference.values),
            mostly=1.0 - domains.max_unseen_fraction,
            meta=meta,
            notes=_champion_notes(meta, champion.reference),
            **condition,
        )
    open_sides = "/".join(side for side, bound in (("min", reference.min), ("max", reference.max)) if bound is not None)
    meta |= _meta(
        f"validate.domains.max_out_of_range_fraction ({action}; dataset.columns.{column} declares no {open_sides})",
        f"champion domain: values {_bounds(reference)} (the range of {snapshot}), at most "
        f"{domains.max_out_of_range_fraction:.2%} outside in the {where} (nulls not counted)",
    )
    return gxe.ExpectColumnValuesToBeBetween(
        column=column,
        min_value=reference.min,
        max_value=reference.max,
        mostly=1.0 - domains.max_out_of_range_fraction,
        meta=meta,
        notes=_champion_notes(meta, champion.reference),
        **condition,
    )


def _champion_notes(meta: dict[str, Any], reference: str) -> str:
    """The Data Docs note of a champion-domain expectation: the rule, the reference snapshot, the params key."""
    return f"{meta['rule']}. Reference: DVC md5 {reference}. Params: {meta['params_key']}."


def _bounds(reference: ColumnReference) -> str:
    """`in [17, 90]`, `<= 1484705` or `>= 3`: the range the champion's data spans, on the schema's open sides."""
    if reference.min is not None and reference.max is not None:
        return f"in [{reference.min}, {reference.max}]"
    return f"<= {reference.max}" if reference.max is not None else f">= {reference.min}"


def validate_frame(
    frame: pd.DataFrame,
    dataset: DatasetConfig,
    cfg: ValidateConfig,
    extra_columns: tuple[str, ...] = (),
    docs_dir: Path | None = None,
    champion: ChampionDomains | None = None,
) -> Any:
    """Run the suite through a GX Checkpoint on an ephemeral context; callers check `success`.

    With `docs_dir`, the checkpoint's UpdateDataDocsAction renders the Data Docs site (HTML) there, also
    when validation fails, and each page is then made self-contained (`retrain.data.datadocs`: no CDN, works
    offline and in MLflow's artifact viewer; the validation result page moves to `validation_result.html`).
    Raises only if a vendored Data Docs asset fails its sha256 check. A frame with the `__source__` column
    gets the champion-domain expectations (`champion`) per source; without it, over all rows. Returns the
    suite's validation result.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site in list(context.list_data_docs_sites()):  # the default site writes to a stray temp dir
        context.delete_data_docs_site(site)
    actions = []
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(
            DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE]))
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("snapshot")
        .add_batch_definition_whole_dataframe("all")
    )
    sources = None
    if SOURCE_COLUMN in frame.columns:
        sources = tuple(sorted(frame[SOURCE_COLUMN].dropna().astype("str").unique(), key=lambda s: (s != "main", s)))
    suite = context.suites.add(build_suite(dataset, cfg, extra_columns, champion, sources))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    if docs_dir is not None:
        sizes = make_self_contained(docs_dir)
        logger.debug("validate: Data Docs made self-contained: %d pages, %d bytes", len(sizes), sum(sizes.values()))
    return next(iter(result.run_results.values()))


def _camel(snake: str) -> str:
    """GX's expectation type (expect_column_values_to_be_between) as its class name."""
    return "".join(part.capitalize() for part in snake.split("_"))


def _raised(item: Any) -> str | None:
    """The exception message if evaluating an expectation raised (GX nests it per metric), else None."""
    info = item.exception_info or {}
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception") or entry.get("exception_traceback"):
            return str(entry.get("exception_message") or "exception")
    return None


def gx_checks(result: Any, snapshot: pd.DataFrame, dataset: DatasetConfig) -> list[Check]:
    """The GX validation result as checks, with observed values in words and the sources of the examples."""
    checks: list[Check] = []
    for item in result.results:
        config = item.expectation_config
        detail = item.result or {}
        meta = config.meta or {}
        rule = _camel(config.type)
        column = config.kwargs.get("column")
        raised = _raised(item)
        indices = detail.get("partial_unexpected_index_list") or []
        check: Check = {
            "rule": rule,
            "engine": "gx",
            "column": column,
            "success": bool(item.success),
            "blocking": bool(meta.get("blocking", True)),
            "expected": str(meta.get("rule", "")),
            "params_key": str(meta.get("params_key", "")),
            "observed": _jsonable(detail.get("observed_value")),
            "unexpected_percent": _jsonable(detail.get("unexpected_percent")),
            "unexpected_examples": _jsonable(detail.get("partial_unexpected_list")),
            "sources": [str(meta["source"])] if meta.get("source") else _sources_of(snapshot, indices),
            "raised": raised is not None,
        }
        if meta.get("reference"):
            check["reference"] = str(meta["reference"])
        if rule == "ExpectTableColumnsToMatchSet":
            check["observed"] = _jsonable((detail.get("details") or {}).get("mismatched"))
        if not check["success"]:
            if meta.get("reference") and raised is None:
                check["observed_text"] = _champion_text(
                    check, detail, snapshot, dict(config.kwargs), meta.get("source")
                )
            else:
                check["observed_text"] = _observed_text(check, detail, raised, snapshot, dataset, dict(config.kwargs))
        checks.append(check)
    order = {name: i for i, name in enumerate(expected_columns(dataset))}
    table = {"ExpectTableColumnsToMatchSet": -3, "ExpectTableRowCountToBeBetween": -2}

    def position(check: Check) -> tuple[int, str]:
        """Table checks first, then columns in schema order."""
        column = check["column"]
        return (order.get(column, -1) if column else table.get(check["rule"], -1), check["rule"])

    return sorted(checks, key=position)


def _sources_of(snapshot: pd.DataFrame, indices: list[Any]) -> list[str]:
    """Which declared sources the example rows come from (by snapshot row index)."""
    if not indices or SOURCE_COLUMN not in snapshot.columns:
        return []
    valid = [i for i in indices if i in snapshot.index]
    return sorted(set(snapshot.loc[valid, SOURCE_COLUMN].astype("str")))


def _observed_text(
    check: Check,
    detail: dict[str, Any],
    raised: str | None,
    snapshot: pd.DataFrame,
    dataset: DatasetConfig,
    kwargs: dict[str, Any],
) -> str:
    """What a failed expectation saw, in words: rate, counts, example values."""
    rule = check["rule"]
    column = check["column"]
    if raised is not None:
        return f"could not be evaluated: {raised.splitlines()[0][:200]}"
    if rule == "ExpectTableColumnsToMatchSet":
        mismatched = check["observed"] or {}
        return f"missing {mismatched.get('missing', [])}, unexpected {mismatched.get('unexpected', [])}"
    if rule == "ExpectTableRowCountToBeBetween":
        return f"observed {check['observed']} rows"
    if rule in ("ExpectColumnValuesToBeInTypeList", "ExpectColumnValuesToBeOfType"):
        text = f"observed dtype {check['observed']}"
        spec = dataset.schema.get(column or "")
        numeric = (spec is not None and spec.type != "category") or (
            column == dataset.target and not dataset.is_classification
        )
        if numeric and column in snapshot.columns:
            bad, share = non_numeric_values(snapshot[column])
            if bad:
                check["unexpected_examples"] = bad
                check["unexpected_percent"] = 100.0 * share
                text += f", {100.0 * share:.2f}% of values are not numbers, e.g. {bad}"
        return text
    percent = check["unexpected_percent"] or 0.0
    count = detail.get("unexpected_count")
    examples = check["unexpected_examples"] or []
    if rule == "ExpectColumnValuesToNotBeNull":
        return f"observed {percent:.2f}% null ({count} rows)"
    if rule == "ExpectCompoundColumnsToBeUnique":
        first = _clip(repr(examples[0])) if examples else "?"
        return f"{percent:.2f}% of rows are duplicates ({count} rows in groups of identical rows), e.g. {first}"
    if rule == "ExpectColumnValuesToBeInSet" and column in snapshot.columns:
        allowed = {str(v) for v in kwargs.get("value_set") or ()}
        values = snapshot[column].dropna().astype("str")
        outside = values[~values.isin(allowed)].value_counts().head(EXAMPLES) if allowed else pd.Series()
        shown = [f"{v!r} x{n}" for v, n in outside.items()] or [repr(e) for e in examples]
        what = "label values not in dataset.labels" if column == dataset.target else "unseen (outside the domain)"
        return f"{percent:.2f}% {what} ({count} rows), e.g. [{', '.join(shown)}]"
    distinct = list(dict.fromkeys(examples))[:EXAMPLES]
    text = f"{percent:.2f}% unexpected ({count} rows), e.g. {distinct}"
    if rule == "ExpectColumnValuesToBeBetween" and column in snapshot.columns:
        values = pd.to_numeric(snapshot[column], errors="coerce")
        text += f"; observed min {_jsonable(values.min())}, max {_jsonable(values.max())}"
    return text


def _champion_text(
    check: Check, detail: dict[str, Any], snapshot: pd.DataFrame, kwargs: dict[str, Any], source: str | None
) -> str:
    """What a failed champion-domain expectation saw: share (GX's), the offending values with counts, the reference."""
    column = check["column"] or ""
    rows = snapshot
    if source and SOURCE_COLUMN in snapshot.columns:
        rows = snapshot[snapshot[SOURCE_COLUMN] == source]
    series = rows[column] if column in rows.columns else pd.Series(dtype="str")
    observed = ""
    if check["rule"] == "ExpectColumnValuesToBeInSet":
        found = unseen(series, [str(v) for v in kwargs.get("value_set") or ()])
        what = "unseen in the champion's training data"
    else:
        found = out_of_range(series, kwargs.get("min_value"), kwargs.get("max_value"))
        numbers = pd.to_numeric(series, errors="coerce")
        what = "outside the champion's range"
        observed = f"; observed min {_jsonable(numbers.min())}, max {_jsonable(numbers.max())}"
    percent = check["unexpected_percent"] or 0.0
    count = detail.get("unexpected_count", found.count)
    non_null = (detail.get("element_count") or 0) - (detail.get("missing_count") or 0) or found.non_null
    check["unexpected_examples"] = [value for value, _ in found.top]
    where = f" of the {source} rows" if source else ""
    return (
        f"{percent:.2f}% of the non-null values{where} ({count} of {non_null}) are {what}, e.g. {found.examples()}"
        f"{observed}; reference: the champion's training snapshot (DVC md5 {check.get('reference')})"
    )


def _clip(text: str, limit: int = 240) -> str:
    """A long example (a whole row) cut to fit one message line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def non_numeric_values(series: pd.Series) -> tuple[list[str], float]:
    """Distinct non-null values that are not numbers (first few), and their share of non-null values."""
    present = series.dropna()
    if present.empty or pd.api.types.is_numeric_dtype(present):
        return [], 0.0
    parsed = pd.to_numeric(present, errors="coerce")
    bad = present[parsed.isna()]
    return [str(v) for v in bad.unique()[:EXAMPLES]], len(bad) / len(present)


# --- table rules GX has no expectation for ------------------------------------------------------------


def label_balance_checks(snapshot: pd.DataFrame, dataset: DatasetConfig, cfg: ValidateConfig) -> list[Check]:
    """Classification: in every source, every declared label is present and holds >= min_class_fraction."""
    if not dataset.is_classification or dataset.target not in snapshot.columns:
        return []
    checks: list[Check] = []
    sources = snapshot[SOURCE_COLUMN] if SOURCE_COLUMN in snapshot.columns else pd.Series("main", snapshot.index)
    for source in sorted(sources.unique(), key=lambda s: (s != "main", s)):
        labels = snapshot.loc[sources == source, dataset.target].dropna().astype("str")
        counts = labels.value_counts()
        total = len(labels)
        shares = {
            str(label): (int(counts.get(label, 0)), int(counts.get(label, 0)) / total if total else 0.0)
            for label in dataset.labels or ()
        }
        low = {label: cs for label, cs in shares.items() if cs[0] == 0 or cs[1] < cfg.min_class_fraction}
        check: Check = {
            "rule": "label_balance",
            "engine": "retrain",
            "column": dataset.target,
            "success": not low,
            "blocking": True,
            "expected": f"every label present and >= {cfg.min_class_fraction:.2%} of labelled rows, per source",
            "params_key": "validate.min_class_fraction",
            "observed": {label: round(share, 6) for label, (_, share) in shares.items()},
            "sources": [str(source)],
        }
        if low:
            check["observed_text"] = "; ".join(
                f"label {label!r} has {share:.2%} ({count} of {total} rows) in source {source}"
                for label, (count, share) in low.items()
            )
        checks.append(check)
    return checks


def cv_check(main: pd.DataFrame, dataset: DatasetConfig, split: SplitConfig, cv_folds: int, has_test: bool) -> Check:
    """Can the main source, after the split, feed `cv_folds` folds? Rarest class (or rows, or groups) bound."""
    factor = 1.0 - split.valid_size
    formula = "(1 - split.valid_size)"
    if not has_test:
        factor *= 1.0 - split.test_size
        formula += " * (1 - split.test_size)"
    counts: dict[str, int] = {}
    unit = "rows"
    if split.group_column and split.group_column in main.columns:
        counts = {"groups": int(main[split.group_column].nunique())}
        unit = f"groups of {split.group_column!r}"
    elif dataset.is_classification and dataset.target in main.columns:
        labels = main[dataset.target].dropna().astype("str").value_counts()
        counts = {str(label): int(labels.get(label, 0)) for label in dataset.labels or ()}
    else:
        counts = {"rows": len(main)}
    name, count = min(counts.items(), key=lambda kv: kv[1])
    in_train = count * factor
    check: Check = {
        "rule": "cv_feasibility",
        "engine": "retrain",
        "column": dataset.target if unit == "rows" and dataset.is_classification else None,
        "success": in_train >= cv_folds,
        "blocking": True,
        "expected": f"rarest class / rows / groups of the main source x {formula} >= candidates.cv_folds",
        "params_key": "candidates.cv_folds, split.valid_size" + ("" if has_test else ", split.test_size"),
        "observed": {"counts": counts, "train_factor": round(factor, 6), "cv_folds": cv_folds},
        "sources": ["main"],
    }
    if not check["success"]:
        what = f"label {name!r} has {count} rows" if dataset.is_classification and unit == "rows" else f"{count} {unit}"
        check["observed_text"] = (
            f"{what} in the main source, about {in_train:.1f} after the split (x {factor:.2f}) "
            f"< candidates.cv_folds = {cv_folds}: the dataset is too small for the configured CV"
        )
    return check


def leakage_checks(scores: LeakageScores, threshold: float, target: str) -> list[Check]:
    """One check per feature: its single-feature held-out score must stay below `leakage_threshold`."""
    if scores.skipped:
        return []
    hits = leaks(scores, threshold)
    checks: list[Check] = []
    for name, score in scores.scores.items():
        check: Check = {
            "rule": "label_leakage",
            "engine": "retrain",
            "column": name,
            "success": name not in hits,
            "blocking": True,
            "expected": f"single-feature {scores.metric} < {threshold:g}",
            "params_key": "validate.leakage_threshold",
            "observed": round(score, 6),
            "sources": ["main"],
        }
        if name in hits:
            check["observed_text"] = (
                f"this feature alone reaches {scores.metric} {score:.4f} on held-out rows: it leaks the label "
                f"{target!r} (a copy or function of it); drop it (dataset.exclude) or fix the source"
            )
        checks.append(check)
    return checks


def drift_checks(drift: dict[str, Any], action: str, reference: str) -> list[Check]:
    """One check per feature with a PSI; a drifted feature fails (action block) or warns (action warn)."""
    checks: list[Check] = []
    for name, entry in drift["features"].items():
        if entry["psi"] is None:
            continue
        check: Check = {
            "rule": "drift_psi",
            "engine": "retrain",
            "column": name,
            "success": not entry["drifted"],
            "blocking": action == "block",
            "expected": f"PSI vs the champion's training snapshot <= {drift['psi_threshold']:g}",
            "params_key": f"validate.drift.psi_threshold (action {action})",
            "observed": entry["psi"],
            "sources": ["main"],
        }
        if entry["drifted"]:
            check["observed_text"] = (
                f"PSI {entry['psi']:.3f} against the champion's training snapshot (DVC md5 {reference}): the "
                f"distribution shifted"
            )
        checks.append(check)
    return checks


# --- the report and its messages ----------------------------------------------------------------------


def build_report(
    checks: list[Check],
    snapshot: pd.DataFrame,
    leakage: LeakageScores,
    threshold: float,
    drift: dict[str, Any],
    domains: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report: verdict, counts, every check, leakage scores, the drift table and the champion domains.

    It holds nothing that is not determined by the stage's cache key (no times, run ids or paths), so a
    rerun on the same inputs writes the same bytes.
    """
    shown = _shown_failures(checks)
    errors = [c for c in shown if c["blocking"]]
    warnings = [c for c in shown if not c["blocking"]]
    rows = snapshot[SOURCE_COLUMN].value_counts().to_dict() if SOURCE_COLUMN in snapshot.columns else {}
    return {
        "success": not errors,
        "evaluated": len(checks),
        "failed": len(errors),
        "warned": len(warnings),
        "rows": {str(k): int(v) for k, v in sorted(rows.items())},
        "checks": [_jsonable(dict(c)) for c in checks],
        "leakage": {
            "metric": leakage.metric,
            "threshold": threshold,
            "rows": leakage.rows,
            "skipped": leakage.skipped,
            "scores": {k: round(v, 6) for k, v in leakage.scores.items()},
            "max": max(leakage.scores.values()) if leakage.scores else None,
        },
        "drift": drift,
        "domains": domains if domains is not None else {"status": "off"},
    }


def _shown_failures(checks: list[Check]) -> list[Check]:
    """Failed checks worth a line: a check that raised on a missing or mistyped column is implied by that line."""
    explained: set[str | None] = set()
    for check in checks:
        if check["success"]:
            continue
        if check["rule"] == "ExpectTableColumnsToMatchSet" and isinstance(check.get("observed"), dict):
            missing = check["observed"].get("missing", [])
            explained.update([*missing, None] if missing else [])
        if check["rule"] in ("ExpectColumnValuesToBeInTypeList", "ExpectColumnValuesToBeOfType") and check["column"]:
            explained.add(check["column"])
    return [
        c
        for c in checks
        if not c["success"] and not (c.get("raised") and (c.get("column") in explained or not c.get("column")))
    ]


def failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocking failures of a report (what fails the gate), one per line of the message."""
    return [c for c in _shown_failures(report["checks"]) if c["blocking"]]


def warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Failed non-blocking checks (drift or champion domains with action warn)."""
    return [c for c in _shown_failures(report["checks"]) if not c["blocking"]]


def describe_failure(check: dict[str, Any], files: dict[str, str | None]) -> str:
    """One line: source file(s), column, rule with its threshold and params key, what was observed."""
    names = check.get("sources") or [name for name, path in files.items() if path]
    where = " + ".join(str(files.get(name) or name) for name in names)
    subject = f"column {check['column']!r}" if check.get("column") else "table"
    rule = f"rule: {check['expected']}" if check.get("expected") else "rule"
    if check.get("params_key"):
        rule += f"; {check['params_key']}"
    observed = check.get("observed_text") or f"observed {check.get('observed')}"
    return f"{where}: {subject}: {check['rule']} failed ({rule}), {observed}"


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page of the checks GX Data Docs do not show (label balance, CV, leakage, drift)."""
    rows = []
    for check in report["checks"]:
        if check.get("engine") != "retrain":
            continue
        status = "pass" if check["success"] else ("FAIL" if check["blocking"] else "warn")
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    status,
                    check["rule"],
                    check.get("column") or "",
                    check.get("expected", ""),
                    check.get("params_key", ""),
                    check.get("observed_text") or check.get("observed"),
                )
            )
            + "</tr>"
        )
    drift = report.get("drift", {})
    verdict = "passed" if report["success"] else "FAILED"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>retrain data gate</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px 6px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>Data gate {verdict}</h1><p>{report['evaluated']} checks, {report['failed']} failed, "
        f"{report['warned']} warnings. Schema, types, ranges, nulls, domains, duplicates and labels: see "
        "<a href='validation_result.html'>the GX validation result</a> (site index: <a href='index.html'>"
        "index.html</a>).</p>"
        "<h2>Table rules</h2><table><tr><th>status</th><th>rule</th><th>column</th><th>expected</th>"
        f"<th>params key</th><th>observed</th></tr>{''.join(rows)}</table>"
        f"<h2>Drift</h2><pre>{html.escape(_pretty(drift))}</pre>"
        "<h2>Champion domains</h2><p>Categories and ranges for the columns dataset.columns leaves open, from "
        "the champion's training snapshot (checked in the GX Data Docs as expectations whose rule starts with "
        f"'champion domain').</p><pre>{html.escape(_pretty(report.get('domains', {})))}</pre>"
        f"<h2>Leakage scores</h2><pre>{html.escape(_pretty(report.get('leakage', {})))}</pre>"
        "</body></html>\n"
    )


def _pretty(value: Any) -> str:
    """Indented JSON for the HTML page."""
    import json

    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _jsonable(value: Any) -> Any:
    """GX and pandas values as plain JSON types (NaN and numpy scalars included)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def check_snapshot(
    snapshot: pd.DataFrame,
    dataset: DatasetConfig,
    params: Params,
    docs: Path,
    drift: Callable[[pd.DataFrame], dict[str, Any]],
    reference: str,
    champion: ChampionDomains | None = None,
) -> tuple[dict[str, Any], float]:
    """Every check of the data gate on one snapshot: (the report, seconds spent in GX).

    GX Data Docs and our checks' HTML land in `docs`. `drift(main rows)` gives the drift section (the caller
    fetches the reference snapshot); `reference` names it in the drift checks. `champion`: the domains and
    ranges taken from that snapshot for the columns the schema leaves open (`retrain.data.domains.derive`);
    None: none (the report says why, from `validate.domains.action` and `reference`). One function for the
    stage task and the benchmarks' plain-Python path, so both run the same gate.
    """
    cfg = params.validate_
    if champion is None:
        champion = without_reference(cfg.domains.action, reference)
    started = time.perf_counter()
    main = main_rows(snapshot)
    has_test = bool((snapshot[SOURCE_COLUMN] == "test").any())
    result = validate_frame(snapshot, dataset, cfg, params.split.extra_columns, docs, champion)
    gx_seconds = time.perf_counter() - started
    checks = gx_checks(result, snapshot, dataset)
    checks += label_balance_checks(snapshot, dataset, cfg)
    checks.append(cv_check(main, dataset, params.split, params.candidates.cv_folds, has_test))
    scores = (
        feature_scores(main, dataset, params.seed)
        if dataset.target in main.columns
        else LeakageScores(METRICS[dataset.task], skipped=f"target {dataset.target!r} is missing")
    )
    checks += leakage_checks(scores, cfg.leakage_threshold, dataset.target)
    drift_section = drift(main)
    if drift_section["status"] == "computed":
        checks += drift_checks(drift_section, drift_section["action"], reference)
    report = build_report(checks, snapshot, scores, cfg.leakage_threshold, drift_section, champion.section(cfg.domains))
    (docs / "retrain_checks.html").write_text(render_html(report))
    return report, gx_seconds
