"""Metrics agree with scikit-learn on constructed predictions; per-group counts cover the split."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import nn

from fer_ray.core.data.records import EXPRESSIONS, FaceDataset, FaceImage, TensorSplit
from fer_ray.core.evaluate import (
    classification_metrics,
    evaluate_model,
    group_accuracy,
    predict_logits,
    predict_proba,
)

CLASSES = ("a", "b", "c", "d")


def _one_hot_probs(predicted: list[int], num_classes: int) -> torch.Tensor:
    probs = torch.full((len(predicted), num_classes), 0.1 / (num_classes - 1))
    probs[torch.arange(len(predicted)), torch.tensor(predicted)] = 0.9
    return probs


def test_classification_metrics_match_sklearn():
    true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    predicted = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1]

    metrics = classification_metrics(_one_hot_probs(predicted, 4), torch.tensor(true), CLASSES)

    assert metrics["n"] == 10
    assert metrics["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro"))
    assert metrics["confusion"] == confusion_matrix(true, predicted, labels=[0, 1, 2, 3]).tolist()
    expected_recall = recall_score(true, predicted, average=None, labels=[0, 1, 2, 3])
    assert [metrics["per_class_recall"][c] for c in CLASSES] == pytest.approx(expected_recall.tolist())
    assert metrics["accuracy"] == pytest.approx(0.6)


def test_recall_of_a_class_without_true_examples_is_nan():
    metrics = classification_metrics(_one_hot_probs([0, 1, 3], 4), torch.tensor([0, 1, 1]), CLASSES)

    assert math.isnan(metrics["per_class_recall"]["c"])
    assert metrics["per_class_recall"]["b"] == pytest.approx(0.5)
    assert metrics["confusion"][1] == [0, 1, 0, 1]


def test_group_accuracy_counts_add_up_and_unknown_is_its_own_group():
    correct = np.array([True, False, True, True, False, True])
    groups = np.array(["S", "S", "HL", None, "HL", "S"], dtype=object)

    result = group_accuracy(correct, groups)

    assert result == {
        "HL": {"acc": 0.5, "n": 2},
        "S": {"acc": pytest.approx(2 / 3), "n": 3},
        "unknown": {"acc": 1.0, "n": 1},
    }
    assert sum(g["n"] for g in result.values()) == len(correct)


class _FixedLogits(nn.Module):
    """Predicts from the mean brightness of each image: a real module with known outputs."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-1.0, 1.0, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) * self.scale * 10.0


def test_predict_proba_accepts_uint8_and_float_and_batches_consistently():
    model = _FixedLogits(7)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)

    from_uint8 = predict_proba(model, images, batch_size=3)
    from_float = predict_proba(model, images.float() / 255.0, batch_size=100)

    assert from_uint8.shape == (10, 7) and from_uint8.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float)
    torch.testing.assert_close(from_uint8.sum(dim=1), torch.ones(10))
    torch.testing.assert_close(from_uint8, predict_logits(model, images).softmax(dim=1))


def test_predict_restores_training_mode():
    model = _FixedLogits(3).train()
    predict_proba(model, torch.rand(2, 3, 4, 4))
    assert model.training


def test_evaluate_model_reports_known_groups_only():
    images = torch.zeros((6, 3, 4, 4), dtype=torch.uint8)
    images[3:] = 255  # bright images -> last class, dark -> middle (logit 0 ties: argmax picks index 0)
    faces = tuple(
        FaceImage(
            path=Path(f"/data/{i}.jpg"),
            expression=EXPRESSIONS[6 if i >= 3 else 0],
            gender="F" if i % 2 else "M",
            angle="S",
        )
        for i in range(8)
    )
    dataset = FaceDataset(name="constructed", images=faces)
    rows = np.arange(6, dtype=np.int64)
    split = TensorSplit(images=images, labels=torch.from_numpy(dataset.labels[rows]), indices=rows)

    result = evaluate_model(_FixedLogits(7), split, dataset)

    assert result["n"] == 6
    assert result["accuracy"] == pytest.approx(1.0)
    assert result["probs"].shape == (6, 7)
    assert set(result) >= {"per_angle", "per_gender"} and "per_race" not in result
    assert result["per_angle"] == {"S": {"acc": 1.0, "n": 6}}
    assert sum(g["n"] for g in result["per_gender"].values()) == 6
