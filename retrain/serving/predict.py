"""The registered model: an MLflow pyfunc that takes raw feature rows and loads without unpickling.

What `predict` returns, per task (the manifest written by `retrain.models.estimators.save_model` says which):

- binary: a 1-D float array, P(positive label);
- multiclass: a DataFrame with one float column per label (named by the label, in `dataset.labels`
  order); each row sums to 1;
- regression: a 1-D float array of predictions.

With `params={"output": "decision"}` a classifier returns a DataFrame with columns `label` (the most
probable label), `confidence` (its probability) and `decision` (the label, or "abstain" when the
confidence is under the threshold stored in the model directory's `confidence.json`).

LightGBM models are served by `FastLightGBM`: the same encoding as `retrain.models.estimators.encode_frame` written
straight into a float array (no pandas Categorical per call; a batch's Arrow string columns are looked up with
`pyarrow.compute.index_in`, ~30x faster than object arrays), so a single row costs a fraction of a millisecond; its
scores equal `LightGBMPredictor.predict_scores` exactly (tests/tasks/test_serving.py). With a compiled mode
(`retrain.serving.compiled`: `background` in the MLflow pyfunc loader and `retrain serve-model`, `off` for the
evaluate stage's gates) the booster is swapped for its lleaves-compiled forest once that is built and checked (equal
within 1e-12). `ServingModel.predict_rows` scores parsed JSON rows without building a DataFrame (serve-model).

Threads follow each family's serving rule (`Threads` in retrain/models/families.py, applied by the loader
`load_predictor` through `ServeThreads`): a request of at most `SERVE_ONE_THREAD_ROWS` rows on one thread, a larger
batch on every available core where the family's batch scores are bit-identical on any number of threads
(LightGBM, hgb), else on one. `ServingModel` keeps the predictors `load_predictor` built, rules included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.models.estimators import (
    CalibratedPredictor,
    LightGBMPredictor,
    Predictor,
    ServeThreads,
    StackingPredictor,
    load_predictor,
    read_model_json,
    serve_output,
    task_scores,
)
from retrain.serving.compiled import CompiledBooster

CONFIDENCE_FILE = "confidence.json"
"""The confidence threshold stored with the model: {"threshold": float, "labels": [...]}."""
OUTPUTS = ("scores", "decision")
"""Values of the `output` predict parameter; "scores" is the default."""
ABSTAIN = "abstain"
LAYOUT_CACHE = 64
"""Column layouts (names in request order) remembered per model, so a client's fixed layout is resolved once."""
SMALL_BATCH = 32
"""Up to this many rows are encoded value by value in Python; larger batches column by column (vectorised)."""


class FastLightGBM:
    """LightGBM scores from raw rows without building a pandas frame of Categoricals on every call.

    Categorical values become their index in the training category list (what LightGBM receives from a
    pandas Categorical), missing or unseen values NaN; numbers become float64, text coerced like
    `pd.to_numeric(errors="coerce")`. Threads: the predictor's rule (`serve`): a request on one, a batch of more
    than `SERVE_ONE_THREAD_ROWS` rows on `threads` (every available core; LightGBM splits rows between threads
    and scores each row the same way, so outputs are bit-identical).
    """

    def __init__(self, predictor: LightGBMPredictor) -> None:
        self.predictor = predictor
        self.features, self.task, self.labels = predictor.features, predictor.task, predictor.labels
        self.booster = predictor.booster
        self.numeric = list(predictor.numeric)
        self.categorical = list(predictor.categories)
        self.codes = {c: {v: float(i) for i, v in enumerate(cats)} for c, cats in predictor.categories.items()}
        self.indexes = {c: pd.Index(cats, dtype=object) for c, cats in predictor.categories.items()}
        self.n_classes = len(predictor.labels or ()) or 2
        self.raw_is_score = predictor.task == "regression" or (
            predictor.task == "binary" and list(predictor.classes) == [0, 1]
        )  # the booster's output is already the score: `task_scores` would copy it unchanged
        self.serve = predictor.serve
        self.compiled: CompiledBooster | None = None
        self._value_sets: dict[str, Any] = {}
        self._last_columns: tuple[pd.Index, tuple[Any, ...]] | None = None
        self._positions: dict[tuple[Any, ...], tuple[list[int], list[tuple[int, dict[str, float]]]]] = {}

    def start_compiled(self, mode: str) -> CompiledBooster | None:
        """Build the compiled forest (`wait`), start building it (`background`), or not (`off`)."""
        if mode == "off":
            return None
        sizes = [len(cats) for cats in self.predictor.categories.values()]
        self.compiled = CompiledBooster(self.booster, sizes).start(mode)
        return self.compiled

    @property
    def threads(self) -> int:
        """Threads of a batch (a request is on one); settable, e.g. to compare thread counts in a benchmark."""
        return self.serve.batch_threads

    @threads.setter
    def threads(self, value: int) -> None:
        self.serve = ServeThreads(value)

    def encode(self, X: pd.DataFrame) -> np.ndarray:
        """(n, features) float64 in the booster's column order (numeric, then categorical)."""
        if len(X) <= SMALL_BATCH:
            return self._encode_rows(X)
        out = np.empty((len(X), len(self.numeric) + len(self.categorical)), dtype=np.float64)
        for j, column in enumerate(self.numeric):
            values = X[column]
            if values.dtype.kind in "iufb":
                out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                out[:, j] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        for j, column in enumerate(self.categorical, start=len(self.numeric)):
            out[:, j] = self._category_codes(column, X[column])
        return out

    def _category_codes(self, column: str, values: pd.Series) -> np.ndarray:
        """Category index per value as float (NaN: missing or unseen); Arrow strings by hash lookup, no Python loop."""
        dtype = values.dtype
        if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
            import pyarrow as pa  # pandas' own string storage
            import pyarrow.compute as pc

            array = pa.array(values.array)
            value_set = self._value_sets.get(column)
            if value_set is None or value_set.type != array.type:
                value_set = self._value_sets[column] = pa.array(self.predictor.categories[column], type=array.type)
            found = np.asarray(pc.index_in(array, value_set=value_set).fill_null(-1), dtype=np.float64)
        else:
            raw = values.to_numpy(dtype=object)
            missing = pd.isna(raw)
            found = self.indexes[column].get_indexer(np.where(missing, None, raw).astype(str)).astype(np.float64)
            found[missing] = np.nan
        found[found < 0] = np.nan
        return found

    def layout(self, columns: tuple[Any, ...]) -> tuple[list[int], list[tuple[int, dict[str, float]]]]:
        """Positions of the numeric and categorical features in a column layout (remembered per layout)."""
        positions = self._positions.get(columns)
        if positions is None:
            where = {c: i for i, c in enumerate(columns)}
            positions = (
                [where[c] for c in self.numeric],
                [(where[c], self.codes[c]) for c in self.categorical],
            )
            if len(self._positions) < LAYOUT_CACHE:
                self._positions[columns] = positions
        return positions

    def encode_lists(self, columns: tuple[Any, ...], rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """Rows as Python sequences (parsed JSON, an object array) straight into the float array, no pandas."""
        numeric, categorical = self.layout(columns)
        return np.array(
            [
                [_number(row[i]) for i in numeric]
                + [math.nan if _missing(row[i]) else codes.get(str(row[i]), math.nan) for i, codes in categorical]
                for row in rows
            ],
            dtype=np.float64,
        ).reshape(len(rows), len(self.numeric) + len(self.categorical))

    def _encode_rows(self, X: pd.DataFrame) -> np.ndarray:
        """Few rows (online requests): plain Python per value beats per-column pandas calls.

        The values come from pandas' column iterator (a view per column, ~4x cheaper than `to_numpy(dtype=object)` on
        a mixed-dtype row); a pandas without it gets `to_numpy`.
        """
        columns = self.columns_key(X.columns)
        arrays = getattr(X, "_iter_column_arrays", None)
        rows = list(zip(*arrays(), strict=True)) if arrays is not None else X.to_numpy(dtype=object)
        return self.encode_lists(columns, rows)

    def columns_key(self, columns: pd.Index) -> tuple[Any, ...]:
        """A frame's column names as a tuple; the last Index is remembered by identity (no tuple per request)."""
        last = self._last_columns
        if last is not None and last[0] is columns:
            return last[1]
        key = tuple(columns)
        self._last_columns = (columns, key)
        return key

    def predict_scores(self, X: pd.DataFrame) -> np.ndarray:
        """Scores in the task's shape, equal to `LightGBMPredictor.predict_scores`; large batches use every core.

        A batch on the compiled forest is encoded chunk by chunk on the forest's threads, each chunk right before
        its walk (`CompiledForest.predict_encoding`: the same scores as encoding it all first).
        """
        threads = self.serve.threads(len(X))
        forest = self.compiled.forest if self.compiled is not None else None
        if forest is not None and threads > 1:
            return self._scores(forest.predict_encoding(lambda i, j: self.encode(X.iloc[i:j]), len(X), threads))
        return self.scores_of(self.encode(X))

    def scores_of(self, encoded: np.ndarray) -> np.ndarray:
        """Scores of encoded rows: the compiled forest once it is ready, else the booster (same thread rule)."""
        threads = self.serve.threads(len(encoded))
        forest = self.compiled.forest if self.compiled is not None else None
        if forest is not None:
            raw = forest.predict(encoded, threads)
        else:
            raw = self.booster.predict(encoded, num_threads=threads)
        return self._scores(raw)

    def _scores(self, raw: np.ndarray) -> np.ndarray:
        """The task's scores from the forest's or booster's output."""
        if self.raw_is_score:
            return np.asarray(raw, dtype=float).reshape(-1)
        return task_scores(np.asarray(raw), self.predictor.task, self.predictor.classes, self.n_classes)


def _number(value: Any) -> float:
    """float(value) as `pd.to_numeric(errors="coerce")` then float64 would give it (missing and junk are NaN)."""
    if isinstance(value, bool | int | float | np.number) and not isinstance(value, np.datetime64 | np.timedelta64):
        return float(value)
    if _missing(value):
        return math.nan
    try:
        return float(pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0])
    except (TypeError, ValueError):
        return math.nan


def with_fast_bases(predictor: Predictor) -> Predictor:
    """The same model with its LightGBM parts (stacking bases, a calibrated model's inner model) on FastLightGBM.

    Scores are identical (FastLightGBM equals LightGBMPredictor bit for bit); only per-call overhead drops. Every
    part keeps its thread rule (the stacking meta-learner's included).
    """
    if type(predictor) is CalibratedPredictor:
        inner = predictor.inner
        fast_inner = FastLightGBM(inner) if type(inner) is LightGBMPredictor else with_fast_bases(inner)
        return CalibratedPredictor(fast_inner, predictor.calibrator)  # type: ignore[arg-type]
    if type(predictor) is StackingPredictor:
        bases = [FastLightGBM(b) if type(b) is LightGBMPredictor else b for b in predictor.bases]
        return StackingPredictor(
            bases,  # type: ignore[arg-type]
            predictor.meta,
            predictor.features,
            labels=predictor.labels,
            serve=predictor.serve,
        )
    return predictor


def _missing(value: Any) -> bool:
    """None, NaN and pd.NA/NaT are missing (what `Series.notna` calls missing)."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def read_confidence(model_dir: Path) -> dict[str, Any] | None:
    """The stored confidence threshold and labels, or None when the model has none."""
    path = model_dir / CONFIDENCE_FILE
    if not path.exists():
        return None
    data = read_model_json(path)
    threshold = data.get("threshold") if isinstance(data, dict) else None
    if not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise ValueError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    return {"threshold": float(threshold), "labels": [str(v) for v in data.get("labels") or []]}


def decisions(
    scores: np.ndarray, task: str, labels: Sequence[str], threshold: float | None, index: pd.Index | None = None
) -> pd.DataFrame:
    """label / confidence / decision per row from classifier scores (P(positive) or (n, k) probabilities)."""
    if task == "regression":
        raise ValueError("output 'decision' needs a classifier; this model is a regression")
    values = np.asarray(scores, dtype=float)
    proba = np.column_stack([1.0 - values, values]) if values.ndim == 1 else values
    if proba.shape[1] != len(labels):
        raise ValueError(f"{proba.shape[1]} score columns but {len(labels)} labels {list(labels)}")
    top = proba.argmax(axis=1)
    confidence = proba[np.arange(len(proba)), top]
    label = np.asarray([str(v) for v in labels], dtype=object)[top]
    keep = np.ones(len(proba), dtype=bool) if threshold is None else confidence >= threshold
    decision = np.where(keep, label, ABSTAIN)
    return pd.DataFrame({"label": label, "confidence": confidence, "decision": decision}, index=index)


class ServingModel:
    """Serves the model directory written by `retrain.models.estimators.save_model` (see the module docstring).

    Plain Python: the MLflow pyfunc's loader module (`retrain.serving.flavor`) returns it, and MLflow calls its
    `predict(model_input, params=...)`.
    """

    def __init__(self, model_dir: Path, compiled: str = "off") -> None:
        """Load the LightGBM text or the trusted-types skops file named by the manifest, and the threshold.

        `compiled` (`retrain.serving.compiled.MODES`): whether each LightGBM part swaps to its compiled forest.
        """
        self.predictor: Predictor = with_fast_bases(load_predictor(model_dir))
        self.fast: FastLightGBM | None = (
            FastLightGBM(self.predictor) if type(self.predictor) is LightGBMPredictor else None
        )
        parts = fast_parts(self.fast or self.predictor)
        self.compiled = [c for part in parts if (c := part.start_compiled(compiled)) is not None]
        self.features = list(self.predictor.features)
        self._checked: set[tuple[Any, ...]] = set()
        self.confidence = read_confidence(model_dir)
        labels = self.predictor.labels
        stored = self.confidence["labels"] if self.confidence is not None else []
        if labels and stored and [str(v) for v in labels] != stored:
            raise ValueError(f"{model_dir / CONFIDENCE_FILE}: labels {stored} differ from the model's labels {labels}")

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """Scores (default) or decisions for raw rows; extra columns are ignored, missing ones fail with their names."""
        output = (params or {}).get("output") or "scores"
        if output not in OUTPUTS:
            raise ValueError(f"params.output must be one of {list(OUTPUTS)}, got {output!r}")
        if self.fast is None:
            served = serve_output(self.predictor, model_input)
            if output == "scores":
                return served
            scores = served.to_numpy(dtype=float) if isinstance(served, pd.DataFrame) else served
        else:
            self._check_columns(model_input)
            scores = self.fast.predict_scores(model_input)
            if output == "scores":
                return _as_output(scores, self.predictor, model_input.index)
        return self._decide(scores, model_input.index)

    def predict_rows(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], params: dict[str, Any] | None = None
    ) -> np.ndarray | pd.DataFrame:
        """`predict` of parsed JSON rows (lists in `columns` order) with no DataFrame built (a LightGBM model only)."""
        if self.fast is None:
            return self.predict(pd.DataFrame(list(rows), columns=list(columns)), params)
        output = (params or {}).get("output") or "scores"
        if output not in OUTPUTS:
            raise ValueError(f"params.output must be one of {list(OUTPUTS)}, got {output!r}")
        layout = tuple(columns)
        self._check_layout(layout)
        scores = self.fast.scores_of(self.fast.encode_lists(layout, rows))
        index = pd.RangeIndex(len(rows))
        if output == "scores":
            return _as_output(scores, self.predictor, index)
        return self._decide(scores, index)

    def get_raw_model(self) -> ServingModel:
        """This object, for `mlflow.pyfunc.load_model(uri).get_raw_model()` (the pyfunc's own fast path)."""
        return self

    def _check_columns(self, X: pd.DataFrame) -> None:
        """Missing feature columns fail with their names; a column layout seen before is not checked again."""
        self._check_layout(self.fast.columns_key(X.columns) if self.fast is not None else tuple(X.columns))

    def _check_layout(self, columns: tuple[Any, ...]) -> None:
        """`_check_columns` of a layout (the column names in order)."""
        if columns in self._checked:
            return
        present = set(columns)
        missing = [c for c in self.features if c not in present]
        if missing:
            raise ValueError(f"input is missing feature columns {missing}")
        if len(self._checked) < LAYOUT_CACHE:
            self._checked.add(columns)

    def _decide(self, scores: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """The decision frame; a model saved without confidence.json cannot abstain, so it refuses."""
        if self.confidence is None:
            raise ValueError(
                f"output 'decision' needs {CONFIDENCE_FILE} in the model (a confidence threshold chosen on "
                "validation: enable evaluate.gates.confidence); this model has none"
            )
        labels = self.predictor.labels or self.confidence["labels"]
        return decisions(scores, self.predictor.task, labels, self.confidence["threshold"], index)


def fast_parts(predictor: Predictor | FastLightGBM) -> list[FastLightGBM]:
    """The FastLightGBM parts of a served model (itself, a calibrated model's inner model, stacking bases)."""
    if isinstance(predictor, FastLightGBM):
        return [predictor]
    if type(predictor) is CalibratedPredictor:
        return fast_parts(predictor.inner)
    if type(predictor) is StackingPredictor:
        return [part for base in predictor.bases for part in fast_parts(base)]
    return []


def _as_output(scores: np.ndarray, predictor: Predictor, index: pd.Index) -> np.ndarray | pd.DataFrame:
    """The default output shape (what `serve_output` returns) from scores."""
    if predictor.task == "multiclass":
        return pd.DataFrame(scores, columns=[str(v) for v in predictor.labels or ()], index=index)
    return np.asarray(scores, dtype=float)
