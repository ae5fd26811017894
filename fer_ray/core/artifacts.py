"""Names of the files fer_ray writes and shares between runs, in one place (no heavy imports: the
orchestrator's trial module reads them before any experiment is loaded)."""

from __future__ import annotations

#: The file name of a trained fer_ray model (core.model_file.save_model), on disk and in MLflow.
MODEL_FILE = "model.pt"
#: The artifact folder a training run logs its model under: an MLflow Model (``runs:/<run id>/model``,
#: orchestrate/mlflow_model.py) holding MODEL_FILE at ``model/artifacts/model.pt``. Runs made before
#: models were MLflow Models hold the bare ``model/model.pt`` there (still read).
MODEL_ARTIFACT_DIR = "model"
