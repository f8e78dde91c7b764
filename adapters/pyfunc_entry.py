"""MLflow "models from code" entry file: logged with the model, it names the pyfunc to serve.

Calling set_model at import is what MLflow requires of this one file; nothing else imports it.
"""

from mlflow.models import set_model

from adapters.mlflow_pyfunc import RetrainModel

set_model(RetrainModel())
