"""How a model directory becomes an MLflow pyfunc: one set of arguments for registering and for checking.

`promote` logs the model with these arguments and the serving gate saves it with the same ones into a
temp dir and loads it in a fresh process, so the gate checks exactly what will be registered.
"""

from __future__ import annotations

from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any

import pandas as pd

RESOURCES = ("pyfunc_entry.py",)
"""The models-from-code entry file logged with every model (engine/codedeps.py counts it as this module's code)."""
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
CODE_PACKAGES = ("retrain", "adapters")
"""Logged as the model's code_paths: the serving code (retrain/) and the pyfunc wrapper (adapters/)."""

REQUIREMENTS = ("mlflow", "lightgbm", "scikit-learn", "skops", "pandas", "numpy", "pyarrow")


def pip_requirements() -> list[str]:
    """Explicit pins from the installed (locked) versions: inferring them costs seconds per model."""
    return [f"{name}=={pkg_version(name)}" for name in REQUIREMENTS]


def pyfunc_kwargs(root: Path, model_dir: Path, example: pd.DataFrame) -> dict[str, Any]:
    """Arguments of mlflow.pyfunc.log_model / save_model for the model directory (models from code)."""
    # imported here: a promote that only confirms the current champion needs neither LightGBM nor sklearn
    from mlflow.models import infer_signature

    from retrain.models.estimators import load_predictor, serve_output
    from retrain.serving.predict import ARTIFACT_KEY, OUTPUTS

    # the signature describes what the pyfunc returns by default (OUTPUTS[0]: scores, or one probability column per
    # label) and declares the `output` parameter, so `mlflow models serve` accepts {"params": {"output": ...}}
    signature = infer_signature(
        example, serve_output(load_predictor(model_dir), example), params={"output": OUTPUTS[0]}
    )
    return {
        "python_model": str(root / "adapters" / ENTRY.name),
        "artifacts": {ARTIFACT_KEY: str(model_dir)},
        "code_paths": [str(root / package) for package in CODE_PACKAGES],
        "pip_requirements": pip_requirements(),
        "signature": signature,
        "input_example": example,
    }
