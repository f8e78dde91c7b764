"""How a model directory becomes an MLflow pyfunc: one set of arguments for registering and for checking.

The pyfunc holds data only: MLmodel's `python_function` flavor names `loader_module` =
`retrain.serving.flavor` (imported from the installed, pinned retrain package) and `data` = the model
directory (LightGBM text, JSON, skops with the pinned trusted types). No code_paths, no python_model, no pickle.
`promote` logs the model with these arguments and the serving gate saves it with the same ones into a
temp dir and loads it in a fresh process, so the gate checks exactly what will be registered.
"""

from __future__ import annotations

from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import pandas as pd

from retrain.serving import flavor

DATA_DIR = "data"
"""Where MLflow copies `data_path` inside the logged model (`data/<model dir name>`)."""
REQUIREMENTS = ("mlflow", "lightgbm", "scikit-learn", "skops", "pandas", "numpy", "pyarrow")


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
