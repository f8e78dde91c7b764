"""Model factory and safe persistence: preprocessing lives inside the model, nothing is pickled.

`build_model` returns an unfitted scikit-learn Pipeline that takes the raw feature columns, so training
and serving cannot drift. `save_model` writes LightGBM text or skops (with a pinned trusted-types list)
plus a JSON manifest; `load_predictor` reads them back without executing arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

MANIFEST = "model.json"
BOOSTER = "booster.txt"
PIPELINE = "pipeline.skops"

SKOPS_TRUSTED_TYPES: frozenset[str] = frozenset({"numpy.dtype"})
"""Types skops may build beyond its own safe defaults; anything else in a file is refused."""


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


def build_model(family: str, params: Mapping[str, Any], numeric: list[str], categorical: list[str]) -> Pipeline:
    """An unfitted Pipeline (preprocessing + estimator) for a family and its hyperparameters."""
    if family == "lightgbm":
        return Pipeline(
            [
                ("prep", CategoryEncoder(numeric, categorical)),
                ("model", lgb.LGBMClassifier(**params)),
            ]
        )
    if family == "logreg":
        prep = ColumnTransformer(
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
        return Pipeline([("prep", prep), ("model", LogisticRegression(**params))])
    raise ValueError(f"unknown model family {family!r}")


class Predictor(Protocol):
    """What evaluation and serving need of a model: positive-class scores for raw rows."""

    features: list[str]

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """P(positive) for each row."""
        ...


class LightGBMPredictor:
    """Serving form of the LightGBM family: booster text plus category lists from JSON."""

    def __init__(self, booster: lgb.Booster, numeric: list[str], categories: dict[str, list[str]]) -> None:
        self.booster = booster
        self.numeric = numeric
        self.categories = categories
        self.features = [*numeric, *categories]

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """P(positive) from the raw columns."""
        return np.asarray(self.booster.predict(encode_frame(X, self.numeric, self.categories), num_threads=1))


class PipelinePredictor:
    """Serving form of scikit-learn families: the fitted Pipeline restored by skops."""

    def __init__(self, pipeline: Pipeline, features: list[str]) -> None:
        self.pipeline = pipeline
        self.features = features

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """P(positive) from the raw columns."""
        return np.asarray(self.pipeline.predict_proba(X[self.features])[:, 1])


def save_model(pipeline: Pipeline, family: str, features: list[str], directory: Path) -> list[Path]:
    """Write a fitted Pipeline in safe formats; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"family": family, "features": features}
    written = []
    if family == "lightgbm":
        encoder: CategoryEncoder = pipeline.named_steps["prep"]
        booster_path = directory / BOOSTER
        booster_path.write_text(pipeline.named_steps["model"].booster_.model_to_string())
        # the booster reads columns by position: keep the categorical order explicit (JSON keys get sorted)
        manifest.update(
            format="lightgbm-text",
            numeric=encoder.numeric,
            categorical=encoder.categorical,
            categories=encoder.categories_,
        )
        written.append(booster_path)
    else:
        pipe_path = directory / PIPELINE
        pipe_path.write_bytes(sio.dumps(pipeline))
        manifest.update(format="skops")
        written.append(pipe_path)
    manifest_path = directory / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return [manifest_path, *written]


def load_predictor(directory: Path) -> Predictor:
    """Load a saved model without unpickling: LightGBM text, or skops restricted to trusted types."""
    manifest = json.loads((directory / MANIFEST).read_text())
    if manifest["format"] == "lightgbm-text":
        booster = lgb.Booster(model_file=str(directory / BOOSTER))
        categories = {c: manifest["categories"][c] for c in manifest["categorical"]}
        return LightGBMPredictor(booster, manifest["numeric"], categories)
    if manifest["format"] == "skops":
        path = directory / PIPELINE
        untrusted = set(sio.get_untrusted_types(file=path))
        refused = untrusted - SKOPS_TRUSTED_TYPES
        if refused:
            raise ValueError(f"{path}: refusing to load types outside the trusted list: {sorted(refused)}")
        pipeline = sio.load(path, trusted=sorted(untrusted))
        return PipelinePredictor(pipeline, manifest["features"])
    raise ValueError(f"{directory / MANIFEST}: unknown model format {manifest['format']!r}")
