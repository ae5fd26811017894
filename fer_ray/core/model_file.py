"""The trained model's file: save_model / load_model (its name: core.artifacts.MODEL_FILE), and the
weights-only torch file I/O shared with fit()'s checkpoints.

Every file written here holds only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``; it is written atomically (core.files.atomic_write).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fer_ray.core.config import ModelConfig
from fer_ray.core.errors import InputError
from fer_ray.core.files import atomic_write
from fer_ray.core.models import FerNet, build_model

MODEL_FORMAT = "fer_ray.model/1"


class CheckpointError(InputError):
    """A checkpoint or model file that is missing, unreadable, or of another format/model."""


def save_model(path: Path, model: FerNet, model_config: ModelConfig, classes) -> Path:
    """Write the trained model (weights + model config + class names) to ``path`` atomically.

    load_model(path) rebuilds it without any other file (the config's weights are not needed).
    """
    content = {
        "format": MODEL_FORMAT,
        "model_state": cpu_state(model),
        "model_config": model_config.model_dump(mode="json"),
        "classes": [str(name) for name in classes],
    }
    return save_torch_file(content, Path(path))


def load_model(path: Path) -> tuple[FerNet, tuple[str, ...]]:
    """The model saved by save_model (on the CPU, eval mode) and its class names.

    Raises CheckpointError naming the file when it is missing or not a fer_ray model file.
    """
    saved = load_torch_file(Path(path), MODEL_FORMAT, "model file")
    classes = tuple(saved["classes"])
    model_config = ModelConfig.model_validate({**saved["model_config"], "weights": "none"})
    model = build_model(model_config, num_classes=len(classes))
    try:
        model.load_state_dict(saved["model_state"])
    except RuntimeError as error:
        raise CheckpointError(f"model file {path}: weights do not fit its own model config: {error}") from error
    return model.eval(), classes


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state dict on the CPU (safe to save while training goes on)."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def save_torch_file(content: dict, path: Path) -> Path:
    """torch.save ``content`` to ``path`` atomically (no half-written file, no temp file left)."""
    return atomic_write(Path(path), lambda temporary: torch.save(content, temporary))


def load_torch_file(path: Path, expected_format: str, what: str) -> dict:
    """A file written by save_torch_file whose "format" is ``expected_format`` (weights-only load,
    tensors on the CPU). Raises CheckpointError naming the file and ``what`` it should be."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for unreadable files
        raise CheckpointError(f"cannot read {what} {path}: {error}") from error
    if not isinstance(content, dict) or content.get("format") != expected_format:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{path} is not a fer_ray {what} (format {expected_format!r}; found {found!r})")
    return content
