"""Preprocessing inside the saved models: what the family builders (retrain/models/families.py) put first.

Kept apart from retrain/models/estimators.py (persistence, predictors, stacking) because the registry's builders
import it: every stage reads the config, the config reads the registry, so whatever the builders import is part
of every stage's code (engine/codedeps.py). Every preprocessing here puts the numeric columns first
(`monotone_params` relies on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler


class CategoryEncoder(TransformerMixin, BaseEstimator):
    """Fixes each categorical column's categories at fit time so LightGBM sees stable codes."""

    def __init__(self, numeric: list[str], categorical: list[str]) -> None:
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: pd.DataFrame, y: Any = None) -> CategoryEncoder:
        """Learn the sorted category list of every categorical column (NaN excluded)."""
        self.categories_ = {c: sorted(X[c].dropna().astype(str).unique().tolist()) for c in self.categorical}
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Numeric columns as float, categoricals as pandas categories; unseen values become missing."""
        return encode_frame(X, self.numeric, self.categories_)


def encode_frame(X: pd.DataFrame, numeric: list[str], categories: Mapping[str, list[str]]) -> pd.DataFrame:
    """Shared by training and serving, so both see exactly the same encoding."""
    out = {c: pd.to_numeric(X[c], errors="coerce").astype("float64") for c in numeric}
    for column, cats in categories.items():
        out[column] = pd.Categorical(X[column].astype("str").where(X[column].notna()), categories=cats)
    return pd.DataFrame(out, index=X.index)[[*numeric, *categories]]


def linear_prep(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    """Impute + scale numbers, impute + one-hot categories (unseen categories encode as all zeros)."""
    return ColumnTransformer(
        [
            ("num", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                categorical,
            ),
        ]
    )


HGB_MAX_CATEGORIES = 250
"""Categories kept per column by `ordinal_prep` (HistGradientBoosting bins at most 255); rarer ones share one code."""


def ordinal_prep(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    """Numbers as they are, categories as ordinal codes (missing and unseen values become NaN); tree families."""
    return ColumnTransformer(
        [
            ("num", "passthrough", numeric),
            (
                "cat",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                    max_categories=HGB_MAX_CATEGORIES,
                ),
                categorical,
            ),
        ]
    )
