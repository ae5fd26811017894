"""MLflow models-from-code entry of a fer_ray model: mlflow copies this file into the logged model and
runs it at load time, so nothing of fer_ray is cloudpickled (see mlflow_model.py)."""

import mlflow

from fer_ray.orchestrate.mlflow_model import FerPyfunc

mlflow.models.set_model(FerPyfunc())
