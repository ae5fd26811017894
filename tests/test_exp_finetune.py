"""The fine-tuning trial's per-run interval of its test accuracy (over test people)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.evaluate import predict_proba
from fer_ray.core.group_stats import accuracy_ci
from fer_ray.core.model_file import load_model
from fer_ray.experiments import finetune
from fer_ray.experiments.finetune import CONFUSION_DIR, CONFUSION_FILE


def test_run_logs_a_subject_clustered_interval_of_its_test_accuracy(tiny_training):
    # the session's one TINY fine-tuning run (conftest): the trial, its reporter and run()'s metrics
    trial, reporter, metrics = tiny_training.trial, tiny_training.reporter, tiny_training.metrics
    folder = reporter.work_dir
    low, high = metrics["test_acc/ci_low"], metrics["test_acc/ci_high"]
    assert 0.0 <= low <= metrics["test_acc"] <= high <= 1.0
    # the interval is the one accuracy_ci gives for the saved model's predictions and the test people
    data = prepare_data(trial.data)
    model = load_model(folder / finetune.MODEL_FILE)[0]
    correct = (predict_proba(model, data.test.images).argmax(dim=1) == data.test.labels).numpy()
    assert np.mean(correct) == pytest.approx(metrics["test_acc"])
    assert (low, high) == pytest.approx(accuracy_ci(correct, data.dataset.identities[data.test.indices]))
    # the test confusion counts the report sums over seeds: one count per test image, diagonal = correct
    assert (folder / CONFUSION_FILE, CONFUSION_DIR) in reporter.artifacts
    counts = np.array(json.loads((folder / CONFUSION_FILE).read_text())["counts"])
    assert counts.sum() == len(correct) and np.trace(counts) == correct.sum()
