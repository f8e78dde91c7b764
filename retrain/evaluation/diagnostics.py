"""Diagnostics of a fitted candidate: loss curves, per-split metrics, learning curve, sample rows, importance, plots.

Pure computation: arrays, dicts, DataFrames and matplotlib Figures (Agg, no pyplot state) are returned,
nothing is logged here (adapters/mlflow_tracking.py does the MLflow side). Everything is seeded and sized to stay
cheap: staged LightGBM scores come from at most `MAX_CURVE_POINTS` chunked predictions (each tree is
evaluated once), the learning curve refits on small seeded fractions (sklearn's learning_curve), permutation
importance (sklearn's permutation_importance) uses at most `MAX_PERMUTATION_ROWS` rows. ROC, PR and the
calibration plot are sklearn's roc_curve, precision_recall_curve and calibration_curve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.base import clone
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance
from sklearn.metrics import auc, confusion_matrix, precision_recall_curve, roc_curve
from sklearn.model_selection import learning_curve as sk_learning_curve
from sklearn.pipeline import Pipeline

from retrain.config import TASK_METRICS
from retrain.metrics import score
from retrain.models.estimators import pipeline_scores, task_scores

logger = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0
"""Least seconds between two progress lines inside one long diagnostic (permutation importance)."""

MAX_CURVE_POINTS = 50
"""At most this many boosting rounds are evaluated for the loss curves (evenly spaced, last round included)."""

LEARNING_POINTS = 4
"""Refitted sizes of the learning curve (log-spaced), plus the full training set (the fitted model, reused)."""

MIN_LEARNING_ROWS = 100
"""Smallest training subset of the learning curve."""

MAX_LEARNING_ROWS = 4000
"""Largest refitted subset: keeps the curve cheap on big data (the full-size point is never refitted)."""

MAX_PERMUTATION_ROWS = 2000
"""Permutation importance (non-tree families) is computed on at most this many valid rows."""

MAX_CLASS_CURVES = 10
"""Multiclass ROC/PR plots draw one-vs-rest curves for at most this many classes (plus micro-average)."""

LOG_LINK_OBJECTIVES = frozenset({"poisson", "gamma", "tweedie"})
"""LightGBM regression objectives whose raw score is on the log scale."""

ScoreFn = Callable[[pd.DataFrame], np.ndarray]


def loss_name(task: str) -> str:
    """The loss the boosting curves report: log loss (classification) or RMSE (regression)."""
    return "rmse" if task == "regression" else "log_loss"


def is_boosted(model: Pipeline) -> bool:
    """Whether the pipeline's estimator is a fitted LightGBM model (has staged predictions)."""
    return hasattr(model.named_steps.get("model"), "booster_")


def boosting_curve(
    model: Pipeline, splits: dict[str, tuple[pd.DataFrame, np.ndarray]], task: str, n_classes: int
) -> dict[str, Any]:
    """Loss per boosting round on each split, from chunked raw-score predictions of the fitted booster.

    Returns {"loss": name, "steps": [k, ...], "<split>": [loss after k rounds, ...]}; each tree is
    evaluated once per split (iteration chunks are summed), so the cost is about one prediction.
    """
    estimator = model.named_steps["model"]
    booster = estimator.booster_
    n_rounds = booster.current_iteration()
    steps = sorted({round(s) for s in np.linspace(1, n_rounds, min(n_rounds, MAX_CURVE_POINTS))})
    objective = str(booster.params.get("objective", ""))
    classes = [int(c) for c in getattr(estimator, "classes_", [])]
    metric = loss_name(task)
    out: dict[str, Any] = {"loss": metric, "steps": steps}
    for split, (X, y) in splits.items():
        encoded = _as_matrix(model.named_steps["prep"].transform(X))
        raw: np.ndarray | None = None
        done, losses = 0, []
        for step in steps:
            chunk = booster.predict(encoded, raw_score=True, start_iteration=done, num_iteration=step - done)
            raw = chunk if raw is None else raw + chunk
            done = step
            losses.append(score(metric, y, _from_raw(raw, task, objective, classes, n_classes)))
        out[split] = losses
    return out


def _as_matrix(encoded: pd.DataFrame) -> np.ndarray:
    """The encoded frame as LightGBM sees it (category codes, missing as NaN): repeated predictions skip pandas."""
    columns = [
        np.where(encoded[c].cat.codes.to_numpy() < 0, np.nan, encoded[c].cat.codes.to_numpy())
        if isinstance(encoded[c].dtype, pd.CategoricalDtype)
        else encoded[c].to_numpy(dtype=float)
        for c in encoded.columns
    ]
    return np.column_stack(columns).astype(float) if columns else np.empty((len(encoded), 0))


def _from_raw(raw: np.ndarray, task: str, objective: str, classes: Sequence[int], n_classes: int) -> np.ndarray:
    """Raw boosting scores to the task's score shape (sigmoid, softmax, or the regression link)."""
    if task == "regression":
        return np.exp(raw) if objective in LOG_LINK_OBJECTIVES else raw
    if raw.ndim == 1:
        return task_scores(1.0 / (1.0 + np.exp(-raw)), task, classes, n_classes)
    shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
    return task_scores(shifted / shifted.sum(axis=1, keepdims=True), task, classes, n_classes)


def split_metrics(task: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Every metric the task supports, on one split."""
    return {name: score(name, y, scores) for name in TASK_METRICS[task]}


def learning_curve(
    model: Pipeline,
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    *,
    task: str,
    n_classes: int,
    metric: str,
    seed: int,
    points: int = LEARNING_POINTS,
) -> dict[str, Any]:
    """Train and valid score vs training-set size: the fitted pipeline refitted on seeded nested subsets.

    Sizes are log-spaced from MIN_LEARNING_ROWS to min(MAX_LEARNING_ROWS, half the training rows), prefixes
    of one seeded permutation (each contains the smaller ones), plus the full size, which reuses the fitted
    model. The refits are sklearn.model_selection.learning_curve with one predefined split (the permuted
    train rows, then the valid rows), single-threaded, on a clone. Returns {"metric", "sizes", "train", "valid",
    "seconds"}.
    """
    started = time.perf_counter()
    n_train = len(X_train)
    order = np.random.default_rng(seed).permutation(n_train)
    top = min(MAX_LEARNING_ROWS, n_train // 2)
    refit = sorted({round(v) for v in np.geomspace(MIN_LEARNING_ROWS, top, points)}) if top > MIN_LEARNING_ROWS else []
    sizes: list[int] = []
    train_scores: list[float] = []
    valid_scores: list[float] = []
    if refit:
        template = clone(model)
        if "model__n_jobs" in template.get_params():
            template.set_params(model__n_jobs=1)
        X_all = pd.concat([X_train, X_valid], ignore_index=True)
        y_all = np.concatenate([np.asarray(y_train), np.asarray(y_valid)])
        split = [(order, np.arange(n_train, n_train + len(X_valid)))]
        for size in refit:  # one size at a time (the same fits as all at once), so each refit can say it is done
            began = time.perf_counter()
            found, train_grid, valid_grid = sk_learning_curve(
                template,
                X_all,
                y_all,
                train_sizes=np.asarray([size]),
                cv=split,
                scoring=_metric_scorer(metric, task, n_classes),
                error_score="raise",
            )
            sizes.append(int(found[0]))
            train_scores.append(float(train_grid[0, 0]))
            valid_scores.append(float(valid_grid[0, 0]))
            logger.info("learning curve: refit on %d rows in %.1f s", sizes[-1], time.perf_counter() - began)
    sizes.append(int(n_train))
    # the full size is the fitted model itself (no refit), scored on the rows in the same permuted order as before
    train_scores.append(
        score(metric, np.asarray(y_train)[order], pipeline_scores(model, X_train.iloc[order], task, n_classes))
    )
    valid_scores.append(score(metric, y_valid, pipeline_scores(model, X_valid, task, n_classes)))
    return {
        "metric": metric,
        "sizes": sizes,
        "train": train_scores,
        "valid": valid_scores,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _metric_scorer(metric: str, task: str, n_classes: int) -> Callable[[Pipeline, pd.DataFrame, np.ndarray], float]:
    """An sklearn scorer (estimator, X, y) -> the project's `metric` on the pipeline's task scores (as is)."""

    def scorer(estimator: Pipeline, X: pd.DataFrame, y: np.ndarray) -> float:
        return score(metric, np.asarray(y), pipeline_scores(estimator, X, task, n_classes))

    return scorer


def sample_table(
    X: pd.DataFrame,
    y: np.ndarray,
    scores: np.ndarray,
    *,
    task: str,
    labels: Sequence[str] | None,
    n_rows: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """A seeded sample of rows: features, the true label, the prediction and its score (P(prediction))."""
    idx = np.sort(np.random.default_rng(seed).choice(len(X), size=min(n_rows, len(X)), replace=False))
    table = X.iloc[idx].reset_index(drop=True).copy()
    if task == "regression":
        table["label"] = np.asarray(y, dtype=float)[idx]
        table["prediction"] = np.asarray(scores, dtype=float)[idx]
        table["residual"] = table["label"] - table["prediction"]
        return table
    proba = _proba_matrix(np.asarray(scores)[idx])
    predicted = proba.argmax(axis=1)
    names = list(labels) if labels else [str(i) for i in range(proba.shape[1])]
    table["label"] = [names[int(c)] for c in np.asarray(y)[idx]]
    table["prediction"] = [names[int(c)] for c in predicted]
    table["probability"] = proba[np.arange(len(idx)), predicted]
    table["correct"] = table["label"] == table["prediction"]
    return table


def _proba_matrix(scores: np.ndarray) -> np.ndarray:
    """(n, k) probabilities from the task's score shape (binary P(positive) -> two columns)."""
    scores = np.asarray(scores, dtype=float)
    return np.column_stack([1.0 - scores, scores]) if scores.ndim == 1 else scores


def feature_importance(
    model: Pipeline,
    features: Sequence[str],
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    score_fn: ScoreFn,
    *,
    metric: str,
    greater_is_better: bool,
    seed: int,
    n_repeats: int = 2,
) -> tuple[str, dict[str, float]]:
    """("gain", LightGBM total gain per feature) or ("permutation", mean metric loss when a column is shuffled).

    Permutation is sklearn.inspection.permutation_importance on at most MAX_PERMUTATION_ROWS seeded valid rows
    and the pipeline's raw feature columns, so one-hot encoded categories count as one feature.
    """
    if is_boosted(model):
        booster = model.named_steps["model"].booster_
        gains = booster.feature_importance(importance_type="gain")
        return "gain", {name: float(g) for name, g in zip(booster.feature_name(), gains, strict=True)}
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(X_valid), size=min(MAX_PERMUTATION_ROWS, len(X_valid)), replace=False)
    X, y = X_valid.iloc[idx].reset_index(drop=True), np.asarray(y_valid)[idx]
    sign = 1.0 if greater_is_better else -1.0
    total, calls, said = 1 + len(X.columns) * n_repeats, [0], [time.perf_counter()]

    def scorer(_: Any, rows: pd.DataFrame, target: np.ndarray) -> float:
        calls[0] += 1
        if time.perf_counter() - said[0] >= PROGRESS_SECONDS:  # a slow model: say how far the shuffling is
            said[0] = time.perf_counter()
            logger.info("permutation importance: %d/%d scorings of %d rows", calls[0], total, len(rows))
        return sign * score(metric, np.asarray(target), score_fn(rows))

    found = permutation_importance(model, X, y, scoring=scorer, n_repeats=n_repeats, random_state=seed)
    by_column = dict(zip(X.columns, found.importances_mean, strict=True))
    return "permutation", {column: float(by_column[column]) for column in features}


def _figure(title: str, size: tuple[float, float] = (5.5, 4.5)) -> tuple[Figure, Any]:
    """A pyplot-free Figure with one titled Axes."""
    fig = Figure(figsize=size, dpi=90)
    ax = fig.subplots()
    ax.set_title(title)
    return fig, ax


def _one_vs_rest(y: np.ndarray, proba: np.ndarray, names: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, 0/1 truth, score) per curve: the positive class for binary; micro-average + classes for multiclass."""
    k = proba.shape[1]
    if k == 2:
        return [(names[1], (y == 1).astype(int), proba[:, 1])]
    onehot = np.eye(k, dtype=int)[np.asarray(y, dtype=np.int64)]
    curves = [("micro-average", onehot.ravel(), proba.ravel())]
    curves += [(names[c], onehot[:, c], proba[:, c]) for c in range(min(k, MAX_CLASS_CURVES)) if onehot[:, c].sum() > 0]
    return curves


def classification_figures(y: np.ndarray, scores: np.ndarray, labels: Sequence[str] | None) -> dict[str, Figure]:
    """ROC, precision-recall, confusion matrix and calibration (top-label for multiclass) figures."""
    proba = _proba_matrix(scores)
    y = np.asarray(y, dtype=np.int64)
    k = proba.shape[1]
    names = list(labels) if labels else [str(i) for i in range(k)]
    curves = [c for c in _one_vs_rest(y, proba, names) if 0 < c[1].sum() < len(c[1])]
    roc, roc_ax = _figure("ROC (valid)")
    pr, pr_ax = _figure("Precision-recall (valid)")
    for name, truth, s in curves:
        fpr, tpr, _ = roc_curve(truth, s)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, s)
        pr_ax.plot(recall, precision, label=f"{name} (area {auc(recall, precision):.3f})")
    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate")
    pr_ax.set(xlabel="recall", ylabel="precision")
    roc_ax.legend(fontsize=7, loc="lower right")
    pr_ax.legend(fontsize=7, loc="lower left")

    predicted = proba.argmax(axis=1)
    matrix = confusion_matrix(y, predicted, labels=list(range(k)))
    conf, conf_ax = _figure("Confusion matrix (valid, rows = true)", (1.2 + 0.7 * max(k, 4), 1 + 0.7 * max(k, 4)))
    conf_ax.imshow(matrix, cmap="Blues")
    conf_ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=7)
    conf_ax.set_yticks(range(k), names, fontsize=7)
    conf_ax.set(xlabel="predicted", ylabel="true")
    for (i, j), count in np.ndenumerate(matrix):
        conf_ax.text(j, i, str(count), ha="center", va="center", fontsize=8)

    calib, calib_ax = _figure("Calibration (valid)")
    if k == 2:
        truth, confidence, label = (y == 1).astype(int), proba[:, 1], f"P({names[1]})"
    else:
        truth, confidence, label = (predicted == y).astype(int), proba.max(axis=1), "top-label confidence"
    if 0 < truth.sum() < len(truth):
        observed, expected = calibration_curve(truth, confidence, n_bins=10, strategy="quantile")
        calib_ax.plot(expected, observed, marker="o", label=label)
    calib_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    calib_ax.set(xlabel="predicted probability", ylabel="observed frequency")
    calib_ax.legend(fontsize=7)
    return {"roc": roc, "pr": pr, "confusion_matrix": conf, "calibration": calib}


def regression_figures(y: np.ndarray, predictions: np.ndarray) -> dict[str, Figure]:
    """Predicted vs actual and residuals vs predicted (at most 5000 points drawn)."""
    y, predictions = np.asarray(y, dtype=float), np.asarray(predictions, dtype=float)
    shown = np.random.default_rng(0).permutation(len(y))[:5000]
    scatter, ax = _figure("Predicted vs actual (valid)")
    ax.scatter(y[shown], predictions[shown], s=4, alpha=0.4)
    low, high = float(min(y.min(), predictions.min())), float(max(y.max(), predictions.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey")
    ax.set(xlabel="actual", ylabel="predicted")
    residuals, rax = _figure("Residuals (valid)")
    rax.scatter(predictions[shown], (y - predictions)[shown], s=4, alpha=0.4)
    rax.axhline(0.0, linestyle="--", color="grey")
    rax.set(xlabel="predicted", ylabel="actual - predicted")
    return {"predicted_vs_actual": scatter, "residuals": residuals}


def importance_figure(kind: str, importance: dict[str, float], top: int = 25) -> Figure:
    """Horizontal bars of the `top` most important features."""
    ranked = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:top]
    fig, ax = _figure(f"Feature importance ({kind})", (6.0, 1.5 + 0.25 * len(ranked)))
    ax.barh([name for name, _ in reversed(ranked)], [value for _, value in reversed(ranked)])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("total gain" if kind == "gain" else "metric drop when shuffled")
    fig.tight_layout()
    return fig


def curve_figure(
    title: str, x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str
) -> Figure:
    """One line per series (loss or learning curves)."""
    fig, ax = _figure(title)
    for name, values in series.items():
        ax.plot(list(x), list(values), marker="o" if len(x) <= 10 else None, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=7)
    return fig


@dataclass
class CandidateDiagnostics:
    """What a family's train-fitted model is judged by beyond its score: metrics, plots, curves, a sample table."""

    metrics: dict[str, float]
    figures: dict[str, Figure]
    table: pd.DataFrame
    documents: dict[str, Any] = field(default_factory=dict)
    """JSON documents by name: loss_curve, learning_curve, feature_importance (when there is a model)."""


def candidate_diagnostics(
    family: str,
    model: Pipeline | None,
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    *,
    task: str,
    features: Sequence[str],
    labels: Sequence[str] | None,
    metric: str,
    seed: int,
    valid_scores: np.ndarray | None = None,
) -> CandidateDiagnostics:
    """Train / valid metrics, the task's plots, the valid sample and, with a model, its curves and importances.

    `model` is the pipeline fitted on train only; None (stacking) gives what `valid_scores` allow. One function
    for the tracking task (which logs the result to MLflow) and the benchmarks' plain path (local files).
    """
    from retrain.metrics import get_metric

    started_all = time.perf_counter()
    n_classes = len(labels) if labels else 0
    y_train, y_valid = np.asarray(y_train), np.asarray(y_valid)
    metrics: dict[str, float] = {}
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    curve_of_sizes: Future[dict[str, Any]] | None = None
    pool = ThreadPoolExecutor(1, thread_name_prefix="learning-curve")
    try:
        curve: dict[str, Any] | None = None
        if model is not None:
            started = time.perf_counter()
            valid_scores = pipeline_scores(model, X_valid, task, n_classes)
            metrics["predict_rows_per_s"] = len(X_valid) / max(time.perf_counter() - started, 1e-9)
            splits["train"] = (y_train, pipeline_scores(model, X_train, task, n_classes))
            if is_boosted(model):
                started = time.perf_counter()
                curve = boosting_curve(model, {"train": (X_train, y_train), "valid": (X_valid, y_valid)}, task,
                                       n_classes)  # fmt: skip
                logger.info("diagnostics %s: loss per boosting round in %.1f s", family, _since(started))
                # a boosted model's learning curve (one thread) runs beside the metrics and plots below, which never
                # call the model: LightGBM's thread count is process-wide, so no two of its calls overlap, and the
                # curve has the same numbers as when run alone
                curve_of_sizes = pool.submit(learning_curve, model, X_train, y_train, X_valid, y_valid, task=task,
                                             n_classes=n_classes, metric=metric, seed=seed)  # fmt: skip
        if valid_scores is None:
            raise ValueError("candidate diagnostics need a model or its valid scores")
        splits["valid"] = (y_valid, np.asarray(valid_scores))
        for split, (y, scores) in splits.items():
            metrics |= {f"{split}_{name}": value for name, value in split_metrics(task, y, scores).items()}
        figures = (
            regression_figures(y_valid, valid_scores)
            if task == "regression"
            else classification_figures(y_valid, valid_scores, labels)
        )
        table = sample_table(X_valid, y_valid, valid_scores, task=task, labels=labels, seed=seed)
        out = CandidateDiagnostics(metrics, figures, table)
        logger.info("diagnostics %s: train/valid metrics, plots, sample table in %.1f s", family, _since(started_all))
        if model is None:
            return out
        if curve is not None:
            out.documents["loss_curve"] = curve
            figures["loss_curve"] = curve_figure(
                f"{family}: {curve['loss']} per boosting round",
                curve["steps"],
                {s: curve[s] for s in ("train", "valid")},
                "boosting round",
                curve["loss"],
            )
        logger.info(
            "diagnostics %s: learning curve, up to %d refits on nested subsets of train", family, LEARNING_POINTS
        )
        learning = (
            curve_of_sizes.result()
            if curve_of_sizes is not None
            else learning_curve(
                model, X_train, y_train, X_valid, y_valid, task=task, n_classes=n_classes, metric=metric, seed=seed
            )
        )
        logger.info("diagnostics %s: learning curve in %.1f s", family, learning["seconds"])
        started = time.perf_counter()
        out.documents["learning_curve"] = learning
        figures["learning_curve"] = curve_figure(
            f"{family}: learning curve",
            learning["sizes"],
            {"train": learning["train"], "valid": learning["valid"]},
            "training rows",
            metric,
        )
        kind, importance = feature_importance(
            model,
            list(features),
            X_valid,
            y_valid,
            lambda X: pipeline_scores(model, X, task, n_classes),
            metric=metric,
            greater_is_better=get_metric(metric).greater_is_better,
            seed=seed,
        )
        out.documents["feature_importance"] = {"kind": kind, "importance": importance}
        figures["feature_importance"] = importance_figure(kind, importance)
        logger.info("diagnostics %s: %s feature importance in %.1f s", family, kind, _since(started))
        return out
    finally:
        pool.shutdown(wait=True)


def _since(started: float) -> float:
    """Seconds since a time.perf_counter() value (for the progress lines)."""
    return time.perf_counter() - started
