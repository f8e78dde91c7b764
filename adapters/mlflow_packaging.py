"""How a model directory becomes an MLflow pyfunc: one set of arguments for registering and for checking.

The pyfunc holds data only: MLmodel's `python_function` flavor names `loader_module` =
`retrain.serving.flavor` (imported from the installed, pinned retrain package) and `data` = the model
directory (LightGBM text, JSON, skops with the pinned trusted types). No code_paths, no python_model, no pickle.
`promote` logs the model with these arguments and the serving gate saves it with the same ones into a
temp dir and loads it in a fresh process, so the gate checks exactly what will be registered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import pandas as pd

from retrain.serving import flavor
from retrain.serving.compiled import MODE_ENV

DATA_DIR = "data"
"""Where MLflow copies `data_path` inside the logged model (`data/<model dir name>`)."""
REQUIREMENTS = ("mlflow", "lightgbm", "scikit-learn", "skops", "pandas", "numpy", "pyarrow")


@contextmanager
def no_compile() -> Iterator[None]:
    """Compiled forest off while MLflow saves or logs the pyfunc.

    MLflow loads the model in this process to validate the input example. A background compile started there
    (~30 s of a core for 1,000 trees) would compete with the gates and promote, and die with the process.
    """
    before = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = "off"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MODE_ENV, None)
        else:
            os.environ[MODE_ENV] = before


def pip_requirements() -> list[str]:
    """Explicit pins from the installed (locked) versions: inferring them costs seconds per model."""
    return [f"{name}=={pkg_version(name)}" for name in REQUIREMENTS]


def artifact_model_dir(model_dir: Path) -> str:
    """The model directory's path inside the logged model (MLmodel `data`), relative and POSIX."""
    return f"{DATA_DIR}/{model_dir.name}"


def pyfunc_kwargs(root: Path, model_dir: Path, example: pd.DataFrame) -> dict[str, Any]:
    """Arguments of mlflow.pyfunc.log_model / save_model for the model directory (loader module + data)."""
    # imported here: a promote that only confirms the current champion needs neither LightGBM nor sklearn
    from mlflow.models import infer_signature

    from retrain.models.estimators import load_predictor, serve_output
    from retrain.serving.predict import OUTPUTS

    # the signature describes what the pyfunc returns by default (OUTPUTS[0]: scores, or one probability column per
    # label) and declares the `output` parameter, so `mlflow models serve` accepts {"params": {"output": ...}}
    signature = infer_signature(
        example, serve_output(load_predictor(model_dir), example), params={"output": OUTPUTS[0]}
    )
    return {
        "loader_module": flavor.MODULE,
        "data_path": str(model_dir),
        "pip_requirements": pip_requirements(),
        "signature": signature,
        "input_example": example,
    }


def log_pyfunc(root: Path, model_dir: Path, example: pd.DataFrame) -> Any:
    """`mlflow.pyfunc.log_model` of the model directory into the active run (promote), with no compile started.

    MLflow validates the input example by loading the model in this process (`Model.log`); without `no_compile`
    that load would start a background compile of the forest that dies with the process a second later.
    """
    import mlflow

    with no_compile():
        return mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(root, model_dir, example))
