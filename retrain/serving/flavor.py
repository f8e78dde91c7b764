"""The registered model's pyfunc loader: MLmodel's `loader_module`, so the code that serves comes from the installed
retrain package, never from the artifact store.

A version's artifact holds data only (the model directory under `data/`, JSON, MLmodel, requirements); MLflow
imports this module from the environment and calls `_load_pyfunc(data_path)`, then `predict(model_input,
params=params)` on what it returns (it passes `params` because `ServingModel.predict` declares it). No MLflow
import here: the same loader serves retrain's own verified paths (`adapters.model_store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrain.serving.predict import ServingModel

MODULE = __name__
"""The `loader_module` written into every MLmodel (`retrain.serving.flavor`)."""


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ServingModel:
    """What `mlflow.pyfunc.load_model` calls with the model directory (MLmodel `data`); model_config is unused.

    The compiled forest follows `RETRAIN_COMPILED` (default `background`: the booster serves until it is ready).
    """
    from retrain.serving.compiled import compile_mode

    return load_serving_model(Path(data_path), compiled=compile_mode())


def load_serving_model(model_dir: Path, compiled: str = "off") -> ServingModel:
    """The object the registered pyfunc predicts with, loaded in this process (latency gate, benchmarks, tests).

    `compiled` defaults to `off`: the evaluate stage's latency gate times the booster path, with no compile competing.
    """
    from retrain.serving.predict import ServingModel  # here: naming this module (packaging) must not load LightGBM

    return ServingModel(Path(model_dir), compiled=compiled)
