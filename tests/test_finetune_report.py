"""The fine-tuning report (experiments.finetune_report) on an in-memory TrialTable: the one-line
answer, the per-configuration table, learning curves from the val_acc histories and the best
configuration's confusion matrix summed over its seeds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import trial_tables
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import finetune_report
from fer_ray.experiments.finetune_report import CONFUSION_ARTIFACT, curve_bands, report
from fer_ray.orchestrate.spec import load_spec

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
CLASSES = ["afraid", "angry", "disgusted", "happy", "neutral", "sad", "surprised"]


def _confusion_file(folder: Path, diagonal: int) -> Path:
    path = folder / CONFUSION_ARTIFACT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"classes": CLASSES, "counts": (np.eye(7, dtype=int) * diagonal + 1).tolist()}))
    return path


def _records(spec, tmp_path):
    """Two learning rates x two seeds; lr 0.001 is better (test_acc 0.5 and 0.6)."""
    rows = [(0.001, 0, 0.5, [0.3, 0.4]), (0.001, 1, 0.6, [0.2, 0.5]), (0.0003, 0, 0.2, [0.1, 0.2]), (0.0003, 1, 0.3, [0.15, 0.25])]
    records = []
    for index, (lr, seed, test_acc, val_curve) in enumerate(rows):
        confusion = _confusion_file(tmp_path / f"run{index}", diagonal=index + 1)
        fetched = []

        def fetch(artifact_path, confusion=confusion, fetched=fetched):
            fetched.append(artifact_path)
            return confusion

        record = trial_tables.record(
            spec, {"train.lr": lr, "train.seed": seed}, {"test_acc": test_acc, "val_acc": val_curve[-1]}, run_id=f"run{index}"
        )
        records.append(replace(record, history={"val_acc": list(enumerate(val_curve, start=1))}, fetch=fetch))
    return records


def test_report_answers_first_with_the_best_configuration_and_its_interval(tmp_path):
    spec = load_spec(SWEEPS / "quickstart.yaml")
    result = report(trial_tables.table(spec, _records(spec, tmp_path)))

    expected = mean_ci([0.5, 0.6], bounds=(0.0, 1.0))
    assert result.metrics["best_test_acc"] == pytest.approx(0.55)
    assert result.metrics["best_test_acc/ci_low"] == pytest.approx(expected["low"])
    assert result.metrics["best_test_acc/ci_high"] == pytest.approx(expected["high"])
    assert 0.0 <= result.metrics["best_test_acc/ci_low"] <= result.metrics["best_test_acc/ci_high"] <= 1.0
    assert result.metrics["best_n_seeds"] == 2
    first = result.markdown.splitlines()[0]
    assert first == (
        f"**best: train.lr=0.001 (chosen on val_acc 0.450), test_acc 0.550 [{expected['low']:.3f}–{expected['high']:.3f}] over 2 seeds**"
    )
    assert result.metrics["best_val_acc"] == pytest.approx(0.45)
    assert "| 0.0003 | 0.250 [" in result.markdown and "clipped to [0, 1]" in result.markdown
    assert set(result.figures) == {"learning_curves.png", "best_confusion_matrix.png"}


def test_the_best_configuration_is_chosen_on_validation_and_its_test_accuracy_read_afterwards(tmp_path):
    """A configuration with the higher test_acc but the lower validation accuracy is not the best: picking
    the largest of several test scores would quote a number biased upwards. best_val_acc (the tested
    weights' validation accuracy) replaces the last epoch's val_acc when runs have it; without any
    validation accuracy the highest test_acc is the best, and the line says why."""
    spec = load_spec(SWEEPS / "quickstart.yaml")

    def table(rows):
        records = [
            trial_tables.record(spec, {"train.lr": lr, "train.seed": 0}, metrics, run_id=f"r{i}") for i, (lr, metrics) in enumerate(rows)
        ]
        return trial_tables.table(spec, records)

    validated = report(
        table(
            [
                (0.001, {"test_acc": 0.7, "best_val_acc": 0.5, "val_acc": 0.9}),
                (0.0003, {"test_acc": 0.6, "best_val_acc": 0.8, "val_acc": 0.1}),
            ]
        )
    )
    assert (
        validated.markdown.splitlines()[0]
        == "**best: train.lr=0.0003 (chosen on best_val_acc 0.800), test_acc 0.600 from one seed (no interval)**"
    )
    assert validated.metrics["best_test_acc"] == 0.6 and validated.metrics["best_val_acc"] == 0.8
    assert "| train.lr | test_acc | best_val_acc | seeds |" in validated.markdown, "the tested weights' val accuracy, not the last epoch's"

    untested = report(table([(0.001, {"test_acc": 0.7}), (0.0003, {"test_acc": 0.6})]))
    assert untested.markdown.splitlines()[0].startswith("**best: train.lr=0.001 (the highest test_acc: no validation split to choose on)")
    assert "best_val_acc" not in untested.metrics


def test_confusion_matrix_sums_the_best_configurations_seeds_only(tmp_path):
    spec = load_spec(SWEEPS / "quickstart.yaml")
    records = _records(spec, tmp_path)
    figure = finetune_report.best_confusion_figure(records[:2], "train.lr=0.001")
    # rows normalised: diagonal (1+1)+(2+1)=5 of row total 5+6*2=17
    shown = figure.axes[0].images[0].get_array()
    assert shown[0, 0] == pytest.approx(5 / 17) and shown[0, 1] == pytest.approx(2 / 17)
    assert "2 run(s) summed" in figure.axes[0].get_title()


def test_learning_curve_bands_are_mean_and_min_max_per_epoch(tmp_path):
    spec = load_spec(SWEEPS / "quickstart.yaml")
    bands = curve_bands(_records(spec, tmp_path)[:2])
    assert bands["step"].tolist() == [1, 2]
    assert bands["mean"].tolist() == pytest.approx([0.25, 0.45])
    assert bands["low"].tolist() == pytest.approx([0.2, 0.4]) and bands["high"].tolist() == pytest.approx([0.3, 0.5])


def test_one_seed_gives_no_interval_and_no_bound_metrics(tmp_path):
    spec = load_spec(SWEEPS / "quickstart.yaml")
    records = [r for r in _records(spec, tmp_path) if r.values["train.seed"] == 0]
    result = report(trial_tables.table(spec, records))
    assert (
        result.markdown.splitlines()[0] == "**best: train.lr=0.001 (chosen on val_acc 0.400), test_acc 0.500 from one seed (no interval)**"
    )
    assert "best_test_acc/ci_low" not in result.metrics and result.metrics["best_test_acc"] == 0.5


def test_dataset_fraction_curve_draws_chance_from_the_reported_classes(tmp_path):
    """accuracy_vs_fraction.png: the mean over seeds per fraction, and a dashed chance line at
    1 / (number of per-class recalls the trials reported): 1/7 for KDEF's seven expressions."""
    spec = load_spec(SWEEPS / "dataset_fraction.yaml")
    recalls = {f"test_recall/{name}": 0.5 for name in CLASSES}
    rows = [(0.1, 0, 0.2), (0.1, 1, 0.18), (0.8, 0, 0.6), (0.8, 1, 0.58)]
    records = [
        trial_tables.record(spec, {"data.train_fraction": fraction, "train.seed": seed}, {"test_acc": acc, **recalls}, run_id=f"r{i}")
        for i, (fraction, seed, acc) in enumerate(rows)
    ]
    table = trial_tables.table(spec, records)
    assert finetune_report.chance_accuracy(table) == pytest.approx(1 / 7)
    axis = report(table).figures["accuracy_vs_fraction.png"].axes[0]
    mean_line, chance_line = axis.lines[0], axis.lines[1]
    assert list(mean_line.get_ydata()) == pytest.approx([0.19, 0.59])
    assert list(chance_line.get_ydata()) == pytest.approx([1 / 7, 1 / 7]) and chance_line.get_linestyle() == "--"
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["mean over seeds", "95 % CI", "chance (0.143)"]
    without_recalls = [replace(r, metrics={"test_acc": r.metrics["test_acc"]}) for r in records]
    assert finetune_report.chance_accuracy(without_recalls) is None
    assert len(report(trial_tables.table(spec, without_recalls)).figures["accuracy_vs_fraction.png"].axes[0].lines) == 1
    one_seed = report(trial_tables.table(spec, records[::2])).figures["accuracy_vs_fraction.png"].axes[0]
    assert [text.get_text() for text in one_seed.get_legend().get_texts()] == ["one run per point (no interval)", "chance (0.143)"]


def test_dataset_fraction_names_the_people_each_fraction_trained_on(tmp_path):
    """n_train_people (a fact each fine-tuning run logs): labels on the fraction curve and a table column
    where the rows differ; a table whose rows all trained on the same people has no such column."""
    spec = load_spec(SWEEPS / "dataset_fraction.yaml")
    rows = [(0.1, 0, 0.3, 4), (0.1, 1, 0.35, 4), (0.8, 0, 0.5, 27), (0.8, 1, 0.55, 27)]
    records = [
        trial_tables.record(spec, {"data.train_fraction": f, "train.seed": seed}, {"test_acc": acc, "n_train_people": n}, run_id=f"r{i}")
        for i, (f, seed, acc, n) in enumerate(rows)
    ]
    result = report(trial_tables.table(spec, records))
    axis = result.figures["accuracy_vs_fraction.png"].axes[0]
    assert sorted(text.get_text() for text in axis.texts) == ["27", "4"] and axis.get_xlabel().endswith("labels: people")
    assert "| data.train_fraction | test_acc | n_train_people | seeds |" in result.markdown
    assert "| 0.1 | 0.325 [" in result.markdown and "] | 4 | 2 |" in result.markdown
    same = [replace(r, metrics={**r.metrics, "n_train_people": 27, "n_params": 11.2e6}) for r in records]
    assert "n_train_people" not in report(trial_tables.table(spec, same)).markdown
    assert "n_params" not in report(trial_tables.table(spec, same)).markdown, "one network: its size is no column"
