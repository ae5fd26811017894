"""Predictions and the metrics computed from them: accuracy, macro-F1, recall per class, confusion,
and accuracy per group (angle, gender, race).

Metric keys here are bare (``accuracy``, ``macro_f1``); callers prefix them with the split
(``test_acc``, ``test_macro_f1``, ``val_acc``) as the project's metric names require.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch import nn

from fer_ray.core.data.records import FaceDataset, TensorSplit
from fer_ray.core.device import autocast, model_device, use_channels_last

#: FaceImage attributes reported as per-group accuracy (key ``per_<attribute>``) when known.
GROUP_ATTRIBUTES: tuple[str, ...] = ("angle", "gender", "race")
#: Group key for images whose attribute is None while others in the split have it.
UNKNOWN_GROUP = "unknown"


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 128, device: torch.device | None = None) -> torch.Tensor:
    """Logits of ``model`` for every image, float32 (N, C) on the CPU.

    images: uint8 (N, 3, H, W) 0..255 or float [0,1], on any device; moved to ``device`` batch by
    batch. device: default the model's own; a model elsewhere is moved there (in place).
    Runs in eval mode (bf16 autocast and channels_last on CUDA) and restores the model's previous
    train/eval mode afterwards.
    """
    device = device or model_device(model)
    model.to(device)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = as_float_images(images[start : start + batch_size].to(device, non_blocking=True))
            if use_channels_last(device):
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                outputs.append(model(batch).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty((0, _num_outputs(model)), dtype=torch.float32)
    return torch.cat(outputs)


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 128, device: torch.device | None = None) -> torch.Tensor:
    """Class probabilities (softmax of the logits), float32 (N, C) on the CPU; see predict_logits."""
    return predict_logits(model, images, batch_size, device).softmax(dim=1)


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [0,1]; float images are returned unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, classes) -> dict:
    """Metrics of the arg-max predictions of ``probs`` (N, C) against ``labels`` int (N,).

    Returns {"accuracy", "macro_f1" (sklearn, over the classes present in labels or predictions),
    "per_class_recall": {class: recall, NaN for a class without true examples},
    "confusion": C x C list of lists of counts (rows = true class, columns = predicted), "n"}.
    """
    true = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    predicted = np.asarray(torch.as_tensor(probs).argmax(dim=1).cpu(), dtype=np.int64)
    class_ids = list(range(len(classes)))
    confusion = confusion_matrix(true, predicted, labels=class_ids)
    true_per_class = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true_per_class > 0, np.diag(confusion) / true_per_class, np.nan)
    return {
        "accuracy": float(accuracy_score(true, predicted)) if len(true) else float("nan"),
        "macro_f1": (float(f1_score(true, predicted, average="macro", zero_division=0)) if len(true) else float("nan")),
        "per_class_recall": {name: float(r) for name, r in zip(classes, recall)},
        "confusion": confusion.tolist(),
        "n": int(len(true)),
    }


def group_accuracy(correct: np.ndarray, groups: np.ndarray) -> dict:
    """Accuracy within each group: {group value: {"acc": fraction correct, "n": images}}.

    correct: bool (N,); groups: (N,) any hashable values (None -> "unknown"). Keys in sorted order;
    the "n" values add up to N.
    """
    correct = np.asarray(correct, dtype=bool)
    keys = np.array([UNKNOWN_GROUP if g is None else g for g in groups], dtype=object)
    result = {}
    for value in sorted(set(keys.tolist()), key=str):
        members = keys == value
        result[value] = {"acc": float(correct[members].mean()), "n": int(members.sum())}
    return result


def evaluate_model(
    model: nn.Module,
    split: TensorSplit,
    dataset: FaceDataset,
    device: torch.device | None = None,
    batch_size: int = 128,
) -> dict:
    """classification_metrics on ``split`` plus per-group accuracy and the probabilities.

    Adds "per_angle" / "per_gender" / "per_race" for each attribute that at least one image of the
    split has (images without it form the "unknown" group), and "probs": float32 (N, C) CPU tensor.
    ``split.indices`` are rows of ``dataset`` (for the attributes). device: see predict_logits.
    """
    probs = predict_proba(model, split.images, batch_size, device)
    metrics = classification_metrics(probs, split.labels, dataset.classes)
    correct = probs.argmax(dim=1).numpy() == split.labels.cpu().numpy()
    for attribute in GROUP_ATTRIBUTES:
        groups = dataset.attribute(attribute)[split.indices]
        if any(g is not None for g in groups):
            metrics[f"per_{attribute}"] = group_accuracy(correct, groups)
    metrics["probs"] = probs
    return metrics


def _num_outputs(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run a block with ``model`` in eval mode and put its previous mode back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
