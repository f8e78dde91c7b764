"""The registered model: an MLflow pyfunc that takes raw feature rows and loads without unpickling.

What `predict` returns, per task (the manifest written by `retrain.models.save_model` says which):

- binary: a 1-D float array, P(positive label);
- multiclass: a DataFrame with one float column per label (named by the label, in `dataset.labels`
  order); each row sums to 1;
- regression: a 1-D float array of predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from retrain.models import Predictor, load_predictor, serve_output

ARTIFACT_KEY = "model_dir"


class RetrainModel(PythonModel):
    """Serves the model directory written by `retrain.models.save_model` (see the module docstring)."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the LightGBM text or the trusted-types skops file named by the manifest."""
        self.predictor: Predictor = load_predictor(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray | pd.DataFrame:
        """Scores for raw rows; extra columns are ignored, missing ones fail with their names."""
        return serve_output(self.predictor, model_input)
