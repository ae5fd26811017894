"""Names of the files fer_ray writes and shares between runs, in one place (no heavy imports: the
orchestrator's trial module reads them before any experiment is loaded)."""

from __future__ import annotations

#: The file name of a trained fer_ray model (core.model_file.save_model), on disk and in MLflow.
MODEL_FILE = "model.pt"
#: The artifact folder a training run logs its model under.
MODEL_ARTIFACT_DIR = "model"
#: Where a training run's model is: ``runs:/<run id>/model/model.pt`` names it.
MODEL_ARTIFACT = f"{MODEL_ARTIFACT_DIR}/{MODEL_FILE}"
