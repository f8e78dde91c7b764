"""LightGBM on a Dask cluster (`lightgbm.dask`) for train tables too large for one in-process fit.

`fit_lightgbm_dask` trains the LightGBM family's model data-parallel on the workers of a Dask cluster and
returns the same Pipeline the in-process builder does (retrain/models/families.py `_build_lightgbm`): the
CategoryEncoder fitted here on all rows, then a local LGBMClassifier / LGBMRegressor (`.to_local()` of the
Dask estimator). So `save_model`, `load_predictor` and `pipeline_scores` treat it like any other LightGBM
model: the booster text and the category lists are saved, and nothing of Dask is needed to predict.

The categories are fixed before the data is partitioned, so every worker's partitions carry the same pandas
categorical codes and the booster's categorical splits mean one thing. A data-parallel booster is not the
in-process one bit for bit (each worker bins its own rows, the histograms are merged over the network), so
whether a stage uses it (`use_dask_lightgbm`) is a setting that changes results.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from retrain.config import RunnerConfig
from retrain.errors import ConfigError
from retrain.models.families import LIGHTGBM_THREAD_KEYS, lightgbm_params
from retrain.models.preprocessing import CategoryEncoder

logger = logging.getLogger(__name__)

DASK_ONLY_KEYS = ("early_stopping_round", "early_stopping_rounds", "early_stopping", "n_iter_no_change")
"""Early stopping needs an eval set, which the final fits on all rows do not have: refused, not ignored."""


def use_dask_lightgbm(runner: RunnerConfig, family: str, rows: int) -> bool:
    """Whether a fit of `family` on `rows` rows goes to the Dask cluster (runner dask, LightGBM, rows >= cap)."""
    threshold = runner.dask_lightgbm_min_rows
    return runner.task_runner == "dask" and family == "lightgbm" and threshold is not None and rows >= threshold


def dask_params(task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The in-process LightGBM hyperparameters for a Dask fit: objective by task, no thread count.

    Thread keys are dropped: lightgbm.dask trains on each worker's own thread count (`runner.
    dask_threads_per_worker`) and warns about any other. An early-stopping key is a ConfigError (the final
    fit has no eval set to stop on).
    """
    stopping = sorted(k for k in params if k in DASK_ONLY_KEYS)
    if stopping:
        raise ConfigError(f"candidates.lightgbm: {stopping} cannot apply to a Dask fit on all rows (no eval set)")
    return {k: v for k, v in lightgbm_params(task, params).items() if k not in LIGHTGBM_THREAD_KEYS}


TARGET = "__y__"
"""Name of the scattered label Series."""


def partitioned(client: Any, encoded: pd.DataFrame, y: np.ndarray, partitions: int) -> tuple[Any, Any]:
    """X and y as Dask collections over row blocks scattered to the workers, block k of both on worker k.

    Scattered, not embedded in the task graph (`dd.from_pandas`), so millions of rows go to the workers
    directly instead of through the scheduler; lightgbm.dask pairs X and y by partition and trains on the
    workers that hold them. X and y are scattered apart, so no task derives one from the other: a derived
    partition may be computed anywhere, and with every block on one worker the fit silently uses one machine.
    """
    import dask.dataframe as dd

    frame = encoded.reset_index(drop=True)
    label = pd.Series(np.asarray(y), name=TARGET)
    bounds = np.linspace(0, len(frame), max(1, min(partitions, len(frame))) + 1).astype(int)
    spans = list(itertools.pairwise(bounds))
    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    home = [[addresses[k % len(addresses)]] for k in range(len(spans))]
    X_parts = [client.scatter(frame.iloc[lo:hi], workers=w) for (lo, hi), w in zip(spans, home, strict=True)]
    y_parts = [client.scatter(label.iloc[lo:hi], workers=w) for (lo, hi), w in zip(spans, home, strict=True)]
    divisions = [*bounds[:-1].tolist(), len(frame) - 1]
    dX = dd.from_delayed(X_parts, meta=frame.iloc[:0], divisions=divisions)
    dy = dd.from_delayed(y_parts, meta=label.iloc[:0], divisions=divisions)
    return dX, dy


def fit_lightgbm_dask(
    client: Any,
    params: Mapping[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    numeric: list[str],
    categorical: list[str],
    task: str,
    partitions: int | None = None,
) -> Pipeline:
    """Fit the LightGBM family on the cluster behind `client` (a distributed.Client or a scheduler address).

    Returns Pipeline([prep, model]) like `build_model("lightgbm", ...)` fitted in process: `model` is the local
    LGBMClassifier / LGBMRegressor of the Dask estimator. `partitions`: default one per worker. Each worker
    trains on its own thread count (the cluster's threads per worker).
    """
    import lightgbm as lgb
    from distributed import Client

    if len(X) != len(y):
        raise ValueError(f"fit_lightgbm_dask: X has {len(X)} rows, y has {len(y)}")
    own = isinstance(client, str)
    active = Client(client, set_as_default=False) if own else client
    try:
        workers = len(active.scheduler_info(n_workers=-1)["workers"])
        if workers == 0:
            raise ConfigError("runner: the Dask cluster has no workers to train LightGBM on")
        prep = CategoryEncoder(numeric, categorical).fit(X)
        dX, dy = partitioned(active, prep.transform(X), y, partitions or workers)
        estimator = lgb.DaskLGBMRegressor if task == "regression" else lgb.DaskLGBMClassifier
        model = estimator(client=active, **dask_params(task, params))
        logger.info("lightgbm.dask: %d rows in %d partitions on %d workers", len(X), dX.npartitions, workers)
        with warnings.catch_warnings():  # the estimator's own n_jobs default; the worker's threads apply
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored", category=UserWarning)
            model.fit(dX, dy)
        local = model.to_local()
    finally:
        if own:
            active.close()
    return Pipeline([("prep", prep), ("model", local)])


def fit_lightgbm_on_cluster(
    params: Mapping[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    numeric: list[str],
    categorical: list[str],
    task: str,
    address: str | None = None,
    partitions: int | None = None,
) -> Pipeline:
    """`fit_lightgbm_dask` from wherever the caller runs: in a Dask worker, or beside the scheduler at `address`.

    In a worker (a family task under `runner.task_runner: dask`) the fit goes through `worker_client`: the
    task secedes from its worker's thread, so that worker trains too instead of the fit waiting on it forever.
    Elsewhere it needs the scheduler's address (`runner.dask_address`).
    """
    from distributed import get_worker, worker_client

    fit = {"numeric": numeric, "categorical": categorical, "task": task, "partitions": partitions}
    try:
        get_worker()
    except ValueError:
        if address is None:
            raise ConfigError(
                "runner.dask_lightgbm_min_rows: a LightGBM fit outside a Dask worker needs runner.dask_address"
            ) from None
        return fit_lightgbm_dask(address, params, X, y, **fit)
    with worker_client() as client:
        return fit_lightgbm_dask(client, params, X, y, **fit)
