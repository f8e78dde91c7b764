"""lightgbm.dask on a real 2-worker LocalCluster (127.0.0.1, no dashboard): the model saves, loads and predicts
like the in-process LightGBM pipeline, and the switch and its config are strict."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.metrics import r2_score, roc_auc_score

from retrain.config import RunnerConfig
from retrain.errors import ConfigError
from retrain.models.distributed import dask_params, fit_lightgbm_dask, fit_lightgbm_on_cluster, use_dask_lightgbm
from retrain.models.estimators import load_predictor, pipeline_scores, save_model

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["colour"]
PARAMS = {"n_estimators": 30, "num_leaves": 7, "learning_rate": 0.2, "verbose": -1, "deterministic": True}


def table(rows: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Two numbers and a colour that drive a binary label and a numeric target."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=rows)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    signal = x1 + 0.5 * x2 + np.where(colour == "red", 1.0, 0.0)
    X = pd.DataFrame({"x1": x1, "x2": x2, "colour": pd.Series(colour, dtype="str")})
    X.loc[::50, "colour"] = None  # missing categories go to their own branch, as in process
    label = (signal + rng.normal(scale=0.5, size=rows) > 0.5).astype(int)
    return X, label, signal + rng.normal(scale=0.1, size=rows)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A real cluster: two worker processes on loopback, no dashboard."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c,
        Client(c) as active,
    ):
        yield active


def test_binary_model_saves_loads_and_predicts_like_in_process(client: Any, tmp_path: Path) -> None:
    X, label, _ = table()
    model = fit_lightgbm_dask(client, PARAMS, X, label, numeric=NUMERIC, categorical=CATEGORICAL, task="binary")
    assert list(model.named_steps) == ["prep", "model"]
    assert type(model.named_steps["model"]).__name__ == "LGBMClassifier", "a local estimator, no Dask inside"
    scores = pipeline_scores(model, X, "binary", 2)
    assert roc_auc_score(label, scores) > 0.85
    save_model(model, "lightgbm", [*NUMERIC, *CATEGORICAL], tmp_path, task="binary", labels=["no", "yes"])
    loaded = load_predictor(tmp_path).predict_scores(X)
    np.testing.assert_allclose(loaded, scores, rtol=0, atol=1e-12)
    booster = model.named_steps["model"].booster_
    assert booster.pandas_categorical == [["blue", "green", "red"]], (
        "the encoder's categories, the same on every worker"
    )
    assert booster.num_trees() == PARAMS["n_estimators"]


def test_regression_and_scheduler_address(client: Any) -> None:
    X, _, target = table(seed=1)
    address = client.scheduler.address
    model = fit_lightgbm_dask(address, PARAMS, X, target, numeric=NUMERIC, categorical=CATEGORICAL, task="regression")
    assert type(model.named_steps["model"]).__name__ == "LGBMRegressor"
    assert r2_score(target, pipeline_scores(model, X, "regression", 0)) > 0.8


def test_mismatched_rows_fail_before_the_cluster_is_used(client: Any) -> None:
    X, label, _ = table(rows=100)
    with pytest.raises(ValueError, match="X has 100 rows, y has 99"):
        fit_lightgbm_dask(client, PARAMS, X, label[:-1], numeric=NUMERIC, categorical=CATEGORICAL, task="binary")


def test_dask_params_set_the_objective_and_leave_threads_to_workers() -> None:
    out = dask_params("binary", {"num_threads": 4, "n_jobs": 3, "num_leaves": 7})
    assert out == {"num_leaves": 7, "objective": "binary"}, "threads: the worker's own"
    with pytest.raises(ConfigError, match=r"\['early_stopping_round'\] cannot apply to a Dask fit"):
        dask_params("binary", {"early_stopping_round": 10})
    with pytest.raises(ConfigError, match=r"does not fit dataset\.task 'regression'"):
        dask_params("regression", {"objective": "binary"})


def test_use_dask_lightgbm_only_for_lightgbm_on_dask_above_the_row_count() -> None:
    dask = RunnerConfig(task_runner="dask", dask_lightgbm_min_rows=1000)
    assert use_dask_lightgbm(dask, "lightgbm", 1000)
    assert not use_dask_lightgbm(dask, "lightgbm", 999)
    assert not use_dask_lightgbm(dask, "logreg", 10**7), "only LightGBM has a Dask estimator"
    assert not use_dask_lightgbm(RunnerConfig(dask_lightgbm_min_rows=1000), "lightgbm", 10**7), "default runner"
    assert not use_dask_lightgbm(RunnerConfig(task_runner="dask"), "lightgbm", 10**7), "null: never"


def test_runner_config_is_strict_about_the_new_key() -> None:
    with pytest.raises(ValidationError, match="dask_lightgbm_min_rows"):
        RunnerConfig(dask_lightgbm_min_rows=0)
    with pytest.raises(ValidationError, match="dask_lightgbm_min_row"):
        RunnerConfig(dask_lightgbm_min_row=10)  # type: ignore[call-arg]


def fit_in_worker(X: pd.DataFrame, label: np.ndarray) -> tuple[str, np.ndarray]:
    """A family task's view: called on a Dask worker, it fits on the whole cluster (module level: shipped by name)."""
    model = fit_lightgbm_on_cluster(PARAMS, X, label, numeric=NUMERIC, categorical=CATEGORICAL, task="binary")
    return model.named_steps["model"].booster_.model_to_string(), pipeline_scores(model, X, "binary", 2)


def test_a_fit_called_inside_a_worker_secedes_and_uses_every_worker(client: Any) -> None:
    X, label, _ = table(seed=2)
    booster, scores = client.submit(fit_in_worker, X, label, pure=False).result(timeout=120)
    assert "tree_sizes" in booster and roc_auc_score(label, scores) > 0.85, "no deadlock on its own worker's thread"


def test_outside_a_worker_the_fit_needs_the_scheduler_address() -> None:
    X, label, _ = table(rows=100)
    with pytest.raises(ConfigError, match=r"needs runner\.dask_address"):
        fit_lightgbm_on_cluster(PARAMS, X, label, numeric=NUMERIC, categorical=CATEGORICAL, task="binary")
