"""The registered model: an MLflow pyfunc that takes raw feature rows and loads without unpickling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from retrain.models import Predictor, load_predictor

ARTIFACT_KEY = "model_dir"


class RetrainModel(PythonModel):
    """Serves P(positive) from the model directory written by `retrain.models.save_model`."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the LightGBM text or the trusted-types skops file named by the manifest."""
        self.predictor: Predictor = load_predictor(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Scores for raw rows; extra columns are ignored, missing ones fail with their names."""
        missing = [c for c in self.predictor.features if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing feature columns {missing}")
        return self.predictor.predict_scores(model_input)
