"""The registered model as an MLflow pyfunc: a thin wrapper around `retrain.serving.predict.ServingModel`.

MLflow hands `load_context` the model directory (artifact `model_dir`) and `predict` the raw rows; everything
else is retrain's own serving code, which never imports MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from retrain.serving.predict import ARTIFACT_KEY, ServingModel


class RetrainModel(PythonModel):
    """The pyfunc logged for every model version (see `adapters/pyfunc_entry.py`)."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the model directory MLflow extracted from the version's artifacts."""
        self.model = ServingModel(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray | pd.DataFrame:
        """Scores (default) or decisions for raw rows: `ServingModel.predict`."""
        return self.model.predict(model_input, params)


def load_serving_model(model_dir: Path) -> RetrainModel:
    """The pyfunc's Python model loaded in this process, as MLflow loads it (for latency measurement and tests)."""
    model = RetrainModel()
    model.load_context(PythonModelContext(artifacts={ARTIFACT_KEY: str(model_dir)}, model_config={}))
    return model
