"""The effective schema: the declared `dataset.columns`/`labels`, or what ingest inferred from the data."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from retrain.config import ColumnSpec, DatasetConfig

logger = logging.getLogger(__name__)


def infer_columns(frame: pd.DataFrame, dataset: DatasetConfig, keep: tuple[str, ...] = ()) -> dict[str, ColumnSpec]:
    """Feature types from dtypes: integers `int`, other numbers `float`, everything else `category`.

    Ranges, domains and null bounds are left open: an inferred schema checks types and table rules only.
    """
    skip = {dataset.target, *dataset.exclude, *keep}
    columns: dict[str, ColumnSpec] = {}
    for name in frame.columns:
        if name in skip or str(name).startswith("__"):
            continue
        dtype = frame[name].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
            kind = "int"
        elif pd.api.types.is_numeric_dtype(dtype):
            kind = "float"
        else:
            kind = "category"
        null_share = float(frame[name].isna().mean())
        columns[str(name)] = ColumnSpec(type=kind, max_null_fraction=min(1.0, round(null_share * 2 + 0.01, 4)))
    return columns


def infer_labels(target: pd.Series) -> tuple[str, ...]:
    """The label set of a classification target, sorted (as strings, as ingest reads them)."""
    return tuple(sorted(str(v) for v in target.dropna().unique()))


def resolve(dataset: DatasetConfig, frame: pd.DataFrame, keep: tuple[str, ...] = ()) -> DatasetConfig:
    """The dataset with columns and labels filled in from the data where params left them open."""
    update: dict[str, Any] = {}
    if dataset.columns is None:
        update["columns"] = infer_columns(frame, dataset, keep)
        logger.info("inferred feature types: %s", {c: s.type for c, s in update["columns"].items()})
    if dataset.is_classification and dataset.labels is None:
        update["labels"] = infer_labels(frame[dataset.target])
        logger.info("inferred labels: %s", update["labels"])
    if not update:
        return dataset
    return DatasetConfig.model_validate({**dataset.model_dump(), **update})


def to_json(declared: DatasetConfig, effective: DatasetConfig) -> dict[str, Any]:
    """The effective schema as written to data/raw/schema.json, saying what was inferred."""
    return {
        "columns": {c: s.model_dump(mode="json") for c, s in effective.schema.items()},
        "labels": list(effective.labels) if effective.labels is not None else None,
        "inferred": {
            "columns": declared.columns is None,
            "labels": declared.is_classification and declared.labels is None,
        },
    }


def from_json(dataset: DatasetConfig, data: dict[str, Any]) -> DatasetConfig:
    """The declared dataset completed with the schema file ingest wrote."""
    update: dict[str, Any] = {}
    if dataset.columns is None:
        update["columns"] = data["columns"]
    if dataset.is_classification and dataset.labels is None:
        update["labels"] = data["labels"]
    if not update:
        return dataset
    return DatasetConfig.model_validate({**dataset.model_dump(), **update})
