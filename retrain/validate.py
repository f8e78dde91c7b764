"""The data gate: a Great Expectations (GX Core 1.x) suite built from the declared schema."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from retrain.config import DatasetConfig, ValidateConfig

logger = logging.getLogger(__name__)

TYPE_NAMES: dict[str, list[str]] = {
    "int": ["int64", "int32", "int", "Int64"],
    "float": ["float64", "float32", "float", "int64", "int32", "int"],
    "category": ["str"],
}
"""dtype names GX reports under pandas 3 for each declared column type."""


def build_suite(dataset: DatasetConfig, cfg: ValidateConfig) -> Any:
    """The expectation suite for the declared schema; needs an active GX context (see `validate_frame`)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{dataset.name}_schema")
    columns = [*dataset.features, dataset.target]
    suite.add_expectation(gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True))
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows))
    for name, spec in dataset.columns.items():
        types = TYPE_NAMES[spec.type]
        if len(types) == 1:  # InTypeList does not match pandas 3's `str` dtype; OfType does
            suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=name, type_=types[0]))
        else:
            suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=types))
        if spec.min is not None or spec.max is not None:
            suite.add_expectation(
                gxe.ExpectColumnValuesToBeBetween(column=name, min_value=spec.min, max_value=spec.max)
            )
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=name, mostly=1.0 - spec.max_null_fraction))
        if spec.domain is not None:
            suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=list(spec.domain)))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=dataset.target))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=dataset.target, value_set=list(dataset.labels)))
    return suite


def validate_frame(frame: pd.DataFrame, dataset: DatasetConfig, cfg: ValidateConfig) -> Any:
    """Run the schema suite on a DataFrame in an ephemeral GX context; never raises, callers check it.

    GX is imported here, not at module level: it takes seconds to import.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = build_suite(dataset, cfg)
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("snapshot")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="data_gate", data=batch, suite=suite))
    return definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
    )


def summarise(result: Any) -> dict[str, Any]:
    """A JSON report of the validation: statistics plus one entry per expectation."""
    checks = []
    for item in result.results:
        config = item.expectation_config
        detail = item.result or {}
        checks.append(
            {
                "rule": config.type,
                "column": config.kwargs.get("column"),
                "success": bool(item.success),
                "observed": _jsonable(detail.get("observed_value")),
                "unexpected_percent": detail.get("unexpected_percent"),
                "unexpected_examples": _jsonable(detail.get("partial_unexpected_list")),
                "details": _jsonable(detail.get("details")),
                "raised": bool(item.exception_info.get("raised_exception")) if item.exception_info else False,
            }
        )
    stats = result.statistics
    return {
        "success": bool(result.success),
        "evaluated": int(stats["evaluated_expectations"]),
        "failed": int(stats["unsuccessful_expectations"]),
        "checks": checks,
    }


def describe_failure(check: dict[str, Any]) -> str:
    """One line naming the column, the rule and the offending values or rate."""
    column = check["column"] or "(table)"
    parts = [f"column {column!r}: {check['rule']} failed"]
    if check["details"] and isinstance(check["details"], dict) and "mismatched" in check["details"]:
        parts.append(f"mismatched columns {check['details']['mismatched']}")
    elif check["observed"] is not None:
        parts.append(f"observed {check['observed']}")
    if check["unexpected_percent"] is not None:
        parts.append(f"{check['unexpected_percent']:.2f}% unexpected")
    if check["unexpected_examples"]:
        parts.append(f"e.g. {check['unexpected_examples'][:5]}")
    return ", ".join(parts)


def _jsonable(value: Any) -> Any:
    """GX result values as plain JSON types (NaN and numpy scalars included)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)
