"""Trained networks as MLflow Models (pyfunc flavour) and ``models:/`` sources from the sweep's registry.

Layout of a logged model (run artifact folder ``model/``)::

    model/MLmodel                 flavour, signature, input example reference
    model/python_model.py         the models-from-code entry (pyfunc_entry.py): no cloudpickle
    model/artifacts/model.pt      the fer_ray model file (fer_ray.core.model_file.save_model): weights,
                                  model config and class names; fer_ray's loaders read it directly
    model/requirements.txt ...    pinned torch / torchvision / fer_ray / mlflow

``mlflow.pyfunc.load_model("runs:/<run>/model")`` (or ``models:/<name>/<version>``) rebuilds the
network from the stored config and loads the weights with ``torch.load(weights_only=True)``;
``predict`` takes float32 images (N, 3, H, W) in [0, 1] and returns float32 class probabilities (N, C).

Registry calls go through ``MlflowClient(tracking_uri=uri, registry_uri=uri)``: MLflow's own
``models:/`` download asks the process-global registry URI, which a Ray worker does not have set
(and which may point elsewhere), so a ``models:/`` source is resolved here to its version's run.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from fer_ray.core.artifacts import MODEL_ARTIFACT_DIR, MODEL_FILE
from fer_ray.orchestrate.spec import SpecError
from fer_ray.orchestrate.tracking import TAG_SOURCE_RUN, Tracker, _retry_locked

#: Run artifact folder of a logged model (runs:/<run id>/model).
MODEL_DIR = MODEL_ARTIFACT_DIR
#: Name of the fer_ray model file inside the pyfunc model (model/artifacts/<WEIGHTS>).
WEIGHTS = MODEL_FILE
#: The models-from-code entry file that mlflow copies into the model (see pyfunc_entry.py).
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))/?$")


class FerPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a fer_ray model file: images float32 (N, 3, H, W) in [0,1] -> probabilities (N, C)."""

    def load_context(self, context) -> None:
        from fer_ray.core.model_file import (
            load_model,  # weights_only=True load, network rebuilt from its config
        )

        self.model, self.classes = load_model(Path(context.artifacts["weights"]))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch  # here, not at the top: trial processes import this module before their experiment

        from fer_ray.core.evaluate import predict_proba

        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return predict_proba(self.model, images).numpy()


def signature(image_size: int, num_classes: int) -> ModelSignature:
    """float32 images (-1, 3, S, S) in [0,1] -> float32 probabilities (-1, num_classes)."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )


def pinned_requirements() -> list[str]:
    """The packages (exact versions of this process) the pyfunc needs to load and predict."""
    return [f"{name}=={metadata.version(name)}" for name in ("torch", "torchvision", "mlflow")] + [f"fer_ray=={fer_ray_version()}"]


def fer_ray_version() -> str:
    """fer_ray's installed version, or pyproject.toml's when it runs from a checkout."""
    try:
        return metadata.version("fer_ray")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
        return found.group(1)


def save_pyfunc(folder: Path, model_file: Path, image_size: int) -> Path:
    """Write the pyfunc model of ``model_file`` (a save_model file) to ``folder`` (must not exist)."""
    from fer_ray.core.model_file import load_model

    _, classes = load_model(model_file)
    example = np.full((1, 3, image_size, image_size), 0.5, dtype=np.float32)
    mlflow.pyfunc.save_model(
        path=str(folder),
        python_model=str(ENTRY_FILE),
        artifacts={"weights": str(model_file)},
        signature=signature(image_size, len(classes)),
        input_example=example,
        pip_requirements=pinned_requirements(),
        metadata={"fer_ray.classes": list(classes)},
    )
    return folder


def log_pyfunc(tracker: Tracker, run_id: str, model_file: Path, image_size: int) -> str:
    """Log ``model_file`` as the MLflow Model ``runs:/<run_id>/model``; returns that URI."""
    with tempfile.TemporaryDirectory(prefix="fer_ray_pyfunc_") as folder:
        tracker.log_artifact(run_id, save_pyfunc(Path(folder) / MODEL_DIR, model_file, image_size), MODEL_DIR)
    return f"runs:/{run_id}/{MODEL_DIR}"


def weights_file(folder: Path) -> Path:
    """The fer_ray model file inside a downloaded model folder (pyfunc layout, or a bare model.pt)."""
    for candidate in (folder / "artifacts" / WEIGHTS, folder / WEIGHTS):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no fer_ray model file in {folder}: expected artifacts/{WEIGHTS} or {WEIGHTS}")


def register(tracker: Tracker, run_id: str, name: str) -> str:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` in the sweep's registry; its version."""
    client = tracker.client
    try:
        _retry_locked(client.create_registered_model, name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    source = f"{_retry_locked(client.get_run, run_id).info.artifact_uri}/{MODEL_DIR}"
    version = _retry_locked(client.create_model_version, name, source, run_id=run_id)
    return str(version.version)


@dataclass(frozen=True)
class RegisteredModel:
    """One resolved version of a registered model: ``uri`` pins it (models:/<name>/<version>)."""

    name: str
    version: str
    run_id: str | None
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def tags(self) -> dict[str, str]:
        """Tags for an evaluation run of this version (the training run when the version has one)."""
        tags = {"fer_ray.source_model_name": self.name, "fer_ray.source_model_version": self.version}
        return tags | ({TAG_SOURCE_RUN: self.run_id} if self.run_id else {})


def resolve_registered(tracker: Tracker, uri: str) -> RegisteredModel:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` looked up in the sweep's own registry.

    Raises SpecError naming source.model and what exists when the URI, model, version or alias is wrong.
    """
    match = _MODELS_URI.match(uri)
    if match is None:
        raise SpecError(f"source.model: {uri!r} is not models:/<name>/<version> or models:/<name>@<alias>")
    name, version, alias = match["name"], match["version"], match["alias"]
    client = tracker.client
    try:
        found = (
            _retry_locked(client.get_model_version, name, version)
            if version
            else _retry_locked(client.get_model_version_by_alias, name, alias)
        )
    except MlflowException as error:
        raise SpecError(f"source.model: {uri!r} is not in the model registry at {tracker.uri}: {_known_versions(tracker, name)}") from error
    return RegisteredModel(name=name, version=str(found.version), run_id=found.run_id or None, source=found.source)


def _known_versions(tracker: Tracker, name: str) -> str:
    """What the registry holds under ``name``, for an error message."""
    try:
        registered = _retry_locked(tracker.client.get_registered_model, name)
        versions = _retry_locked(tracker.client.search_model_versions, f"name = '{name}'")
    except MlflowException:
        return f"no registered model named {name!r}"
    return f"model {name!r} has versions {sorted(int(v.version) for v in versions)} and aliases {sorted(registered.aliases or {})}"


def download_registered(tracker: Tracker, model: RegisteredModel, folder: Path) -> Path:
    """The fer_ray model file of a registered version, downloaded into ``folder`` through the tracking server."""
    folder.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model.source, dst_path=str(folder), tracking_uri=tracker.uri)
    return weights_file(Path(local))


def register_best(tracker: Tracker, parent_id: str, name: str) -> str:
    """Register the model of the finished child run of ``parent_id`` with the highest best_val_acc
    (model selection on validation data, never test) as a new version of ``name``; a one-line summary."""
    children = tracker.children(parent_id)
    if children.empty or "metrics.best_val_acc" not in children:
        return f"register: no trained model under parent run {parent_id}; nothing registered as {name!r}"
    finished = children[(children["status"] == "FINISHED") & children["metrics.best_val_acc"].notna()]
    if finished.empty:
        return f"register: no finished trial under parent run {parent_id}; nothing registered as {name!r}"
    best = finished.loc[finished["metrics.best_val_acc"].idxmax()]
    version = register(tracker, best["run_id"], name)
    return f"Registered models:/{name}/{version} (run {best['run_name']}, best_val_acc {best['metrics.best_val_acc']:.4f}) in {tracker.uri}"
