"""Diagnostics are computed right: staged losses end at the model's loss, curves and tables have the promised shape."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from retrain.evaluation import diagnostics as diag
from retrain.metrics import score
from retrain.models.estimators import build_model, pipeline_scores

NUMERIC, CATEGORICAL = ["x1", "x2"], ["c"]


def data(task: str, n: int = 1200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "c": rng.choice(list("abcd"), size=n)})
    X.loc[rng.random(n) < 0.05, "x2"] = np.nan
    signal = 1.5 * X["x1"].to_numpy() + (X["c"] == "a").to_numpy() + rng.normal(scale=0.7, size=n)
    if task == "regression":
        return X, signal
    if task == "binary":
        return X, (signal > 0.3).astype(int)
    return X, np.digitize(signal, [-0.5, 0.8])


def fitted(family: str, task: str) -> tuple:
    X, y = data(task)
    params = {"n_estimators": 40, "num_leaves": 7, "verbose": -1, "n_jobs": 1} if family == "lightgbm" else {}
    model = build_model(family, params, NUMERIC, CATEGORICAL, task=task).fit(X.iloc[:900], y[:900])
    return model, X.iloc[:900], y[:900], X.iloc[900:], y[900:]


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_boosting_curve_ends_at_the_models_own_loss(task: str) -> None:
    model, X_train, y_train, X_valid, y_valid = fitted("lightgbm", task)
    k = 3 if task == "multiclass" else 2
    curve = diag.boosting_curve(model, {"train": (X_train, y_train), "valid": (X_valid, y_valid)}, task, k)
    assert curve["steps"] == list(range(1, 41)), "every round when there are fewer than MAX_CURVE_POINTS"
    final = score(curve["loss"], y_valid, pipeline_scores(model, X_valid, task, k))
    assert curve["valid"][-1] == pytest.approx(final, rel=1e-9), "the last staged loss is the fitted model's loss"
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(curve["train"])), "train loss falls round by round"
    assert curve["valid"][-1] < curve["valid"][0], "valid loss improves over the rounds"


def test_split_metrics_cover_every_task_metric() -> None:
    y = np.array([0, 1, 1, 0, 1])
    metrics = diag.split_metrics("binary", y, np.array([0.1, 0.8, 0.7, 0.3, 0.4]))
    assert set(metrics) == {"roc_auc", "log_loss", "accuracy", "balanced_accuracy"}
    assert metrics["roc_auc"] == 1.0 and metrics["accuracy"] == 0.8, metrics


@pytest.mark.parametrize("family", ["lightgbm", "logreg"])
def test_learning_curve_sizes_grow_and_end_at_full_train(family: str) -> None:
    model, X_train, y_train, X_valid, y_valid = fitted(family, "binary")
    curve = diag.learning_curve(
        model, X_train, y_train, X_valid, y_valid, task="binary", n_classes=2, metric="roc_auc", seed=1
    )
    assert curve["sizes"][0] == diag.MIN_LEARNING_ROWS and curve["sizes"][-1] == 900, curve["sizes"]
    assert curve["sizes"] == sorted(set(curve["sizes"])), "strictly increasing sizes"
    full = score("roc_auc", y_valid, pipeline_scores(model, X_valid, "binary", 2))
    assert curve["valid"][-1] == pytest.approx(full), "the full-size point is the fitted model, not a refit"
    assert curve["valid"][-1] > curve["valid"][0], "more data helps on this signal"
    again = diag.learning_curve(
        model, X_train, y_train, X_valid, y_valid, task="binary", n_classes=2, metric="roc_auc", seed=1
    )
    assert again["valid"] == curve["valid"], "seeded: the same subsets give the same curve"


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_candidate_diagnostics_refits_beside_the_plots_give_the_curve_run_alone(task: str) -> None:
    model, X_train, y_train, X_valid, y_valid = fitted("lightgbm", task)
    k = 3 if task == "multiclass" else 2
    labels = ["lo", "mid", "hi"][:k]
    metric = "roc_auc" if task == "binary" else "log_loss"
    alone = diag.learning_curve(
        model, X_train, y_train, X_valid, y_valid, task=task, n_classes=k, metric=metric, seed=3
    )
    found = diag.candidate_diagnostics(
        "lightgbm", model, X_train, y_train, X_valid, y_valid,
        task=task, features=NUMERIC + CATEGORICAL, labels=labels, metric=metric, seed=3,
    )  # fmt: skip
    beside = found.documents["learning_curve"]
    for key in ("sizes", "train", "valid"):
        assert beside[key] == alone[key], f"{key}: the threaded refits must equal the sequential ones exactly"
    assert {"loss_curve", "learning_curve"} <= set(found.figures), sorted(found.figures)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_sample_table_and_figures(task: str) -> None:
    model, _, _, X_valid, y_valid = fitted("lightgbm", task)
    k = 3 if task == "multiclass" else 2
    labels = None if task == "regression" else ["lo", "mid", "hi"][:k]
    scores = pipeline_scores(model, X_valid, task, k)
    table = diag.sample_table(X_valid, y_valid, scores, task=task, labels=labels, n_rows=50, seed=2)
    extra = ["label", "prediction", "residual"] if task == "regression" else ["label", "prediction", "probability"]
    assert len(table) == 50 and set(extra) <= set(table.columns), table.columns
    assert list(table.columns[:3]) == ["x1", "x2", "c"], "the feature columns come first"
    if task == "regression":
        figures = diag.regression_figures(y_valid, scores)
        assert set(figures) == {"predicted_vs_actual", "residuals"}
    else:
        assert set(table["label"]) <= set(labels), "labels are shown as names"
        figures = diag.classification_figures(y_valid, scores, labels)
        assert set(figures) == {"roc", "pr", "confusion_matrix", "calibration"}
        n_roc = len(figures["roc"].axes[0].lines)
        assert n_roc == (2 if task == "binary" else 1 + k + 1), (
            "binary: one curve + chance; multiclass: micro + per class"
        )
    assert all(isinstance(f, Figure) for f in figures.values())


def test_importance_is_gain_for_trees_and_permutation_otherwise() -> None:
    for family in ("lightgbm", "logreg"):
        model, _, _, X_valid, y_valid = fitted(family, "binary")
        kind, importance = diag.feature_importance(
            model,
            [*NUMERIC, *CATEGORICAL],
            X_valid,
            y_valid,
            lambda X, m=model: pipeline_scores(m, X, "binary", 2),
            metric="roc_auc",
            greater_is_better=True,
            seed=0,
        )
        assert kind == ("gain" if family == "lightgbm" else "permutation"), family
        assert set(importance) == {"x1", "x2", "c"}, importance
        assert max(importance, key=importance.get) == "x1", f"{family}: x1 carries the signal, {importance}"
        assert importance["x2"] < importance["x1"] / 5, f"{family}: x2 is noise, {importance}"
        assert isinstance(diag.importance_figure(kind, importance), Figure)


def test_learning_curve_points_are_refits_on_the_seeded_prefixes() -> None:
    """Each refitted point is the pipeline fitted on the first n rows of the seeded permutation (sklearn wiring)."""
    from sklearn.base import clone

    model, X_train, y_train, X_valid, y_valid = fitted("lightgbm", "binary")
    curve = diag.learning_curve(
        model, X_train, y_train, X_valid, y_valid, task="binary", n_classes=2, metric="log_loss", seed=3
    )
    order = np.random.default_rng(3).permutation(len(X_train))
    for i in (0, len(curve["sizes"]) - 2):
        n = curve["sizes"][i]
        refit = clone(model).set_params(model__n_jobs=1).fit(X_train.iloc[order[:n]], y_train[order[:n]])
        train = score("log_loss", y_train[order[:n]], pipeline_scores(refit, X_train.iloc[order[:n]], "binary", 2))
        valid = score("log_loss", y_valid, pipeline_scores(refit, X_valid, "binary", 2))
        assert curve["train"][i] == pytest.approx(train, rel=1e-12), f"train score at {n} rows"
        assert curve["valid"][i] == pytest.approx(valid, rel=1e-12), f"valid score at {n} rows"


def test_small_training_sets_have_only_the_full_size_point() -> None:
    model, X_train, y_train, X_valid, y_valid = fitted("logreg", "binary")
    small = diag.learning_curve(
        model, X_train.iloc[:150], y_train[:150], X_valid, y_valid, task="binary", n_classes=2, metric="roc_auc", seed=0
    )
    assert small["sizes"] == [150], f"half of 150 rows is under MIN_LEARNING_ROWS: no refit, {small['sizes']}"


def test_permutation_importance_is_sklearns_with_the_metric_as_scorer() -> None:
    from sklearn.inspection import permutation_importance

    model, _, _, X_valid, y_valid = fitted("logreg", "multiclass")
    scores = lambda X: pipeline_scores(model, X, "multiclass", 3)  # noqa: E731
    kind, importance = diag.feature_importance(
        model, ["x1", "x2", "c"], X_valid, y_valid, scores, metric="log_loss", greater_is_better=False, seed=4
    )
    assert kind == "permutation" and importance["x1"] > 0.1, f"shuffling x1 raises the log loss: {importance}"
    idx = np.random.default_rng(4).choice(len(X_valid), size=len(X_valid), replace=False)
    X, y = X_valid.iloc[idx].reset_index(drop=True), y_valid[idx]
    direct = permutation_importance(
        model, X, y, scoring=lambda _m, X, y: -score("log_loss", y, scores(X)), n_repeats=2, random_state=4
    )
    assert list(importance.values()) == pytest.approx(list(direct.importances_mean), rel=1e-12), (
        "the same seeded rows, scorer and repeats give sklearn's numbers"
    )
