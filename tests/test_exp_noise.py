"""The noise experiment: run() with a LocalReporter on real model files, spec validation, and the
noise_sig sweep end to end (real local Ray, real MLflow on sqlite)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import trial_tables
from conftest import TINY
from e2e import run_sweep
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.data.records import EXPRESSIONS
from fer_ray.core.evaluate import evaluate_model, predict_logits
from fer_ray.core.model_file import load_model, save_model
from fer_ray.core.models import build_model
from fer_ray.core.robustness import add_gaussian_noise
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import noise
from fer_ray.experiments.base import LocalReporter, Trial, load_model_and_data
from fer_ray.orchestrate.spec import SpecError, resolve_spec
from figure_texts import expected_labels, prediction_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny tensors run faster on one thread


@pytest.fixture(scope="module")
def input_sensitive_model(tmp_path_factory) -> Path:
    """A real fer_ray model file whose predictions move with the noise: a seeded random-init ResNet-18.

    The 2-epoch tiny_trained_model predicts one class for every test image, noisy or not, so it
    cannot show that a different noise seed changes which images are classified correctly.
    """
    spec = resolve_spec({"name": "t", "experiment": "noise"}, TINY)
    torch.manual_seed(0)
    model = build_model(spec.model, num_classes=len(EXPRESSIONS))
    return save_model(tmp_path_factory.mktemp("random_model") / "model.pt", model, spec.model, EXPRESSIONS)


def _trial(model_file: Path, *overrides: str) -> Trial:
    spec = resolve_spec({"name": "t", "experiment": "noise"}, [*TINY, *overrides])
    return Trial(sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=model_file)


def _run(model_file: Path, folder: Path, *overrides: str) -> tuple[dict, LocalReporter, np.lib.npyio.NpzFile]:
    reporter = LocalReporter(folder)
    metrics = noise.run(_trial(model_file, *overrides), reporter)
    ((artifact, artifact_dir),) = reporter.artifacts
    assert artifact_dir == noise.ARTIFACT_DIR
    return metrics, reporter, np.load(artifact)


def test_run_reports_clean_and_noisy_accuracy_with_paired_statistics(tiny_trained_model, tmp_path):
    metrics, reporter, saved = _run(
        tiny_trained_model, tmp_path, "settings.variances=[0, 0.01, 0.1]", "settings.n_examples=2", "settings.n_boot=200"
    )
    accuracies = {k: v for k, v in metrics.items() if re.fullmatch(r"test_acc|acc_var_[^/]+", k)}
    assert set(accuracies) == {"test_acc", "acc_var_0", "acc_var_0.01", "acc_var_0.1"}
    assert all(0.0 <= v <= 1.0 for v in accuracies.values())
    assert metrics["acc_var_0"] == metrics["test_acc"], "variance 0 is the clean image"

    # clean accuracy is the model's ordinary test accuracy
    data = prepare_data(_trial(tiny_trained_model).data)
    model, _ = load_model(tiny_trained_model)
    assert metrics["test_acc"] == pytest.approx(evaluate_model(model, data.test, data.dataset)["accuracy"])

    for label in ("0.01", "0.1"):
        low, high = metrics[f"acc_var_{label}/subject_ci_low"], metrics[f"acc_var_{label}/subject_ci_high"]
        assert low <= metrics[f"acc_var_{label}"] <= high
        assert 0.0 <= metrics[f"mcnemar_p_var_{label}"] <= 1.0
    assert "mcnemar_p_var_0" not in metrics, "no test of clean against itself"

    # the artifact holds the per-image correctness the metrics were computed from
    assert list(saved["variances"]) == [0.0, 0.01, 0.1]
    assert saved["correct"].shape == (3, len(data.test)) and saved["correct"].dtype == bool
    assert saved["correct"].mean(axis=1) == pytest.approx([metrics["acc_var_0"], metrics["acc_var_0.01"], metrics["acc_var_0.1"]])
    np.testing.assert_array_equal(saved["dataset_rows"], data.test.indices)
    assert set(saved["identities"]) == set(data.dataset.identities[data.test.indices])
    clean, noisy = saved["correct"][0], saved["correct"][2]
    assert metrics["mcnemar_b_var_0.1"] == np.sum(clean & ~noisy) and metrics["mcnemar_c_var_0.1"] == np.sum(~clean & noisy)

    assert reporter.tag_values["fer_ray.sigma_var_0.1"] == "0.3162"
    assert reporter.tag_values["fer_ray.noise_seed"] == "0"
    panel = reporter.figures["noise_examples.png"]
    assert panel.is_file() and panel.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_noise_seed_gives_identical_results_and_another_seed_other_noise(input_sensitive_model, tmp_path):
    options = ("settings.variances=[0.1, 0.3]", "settings.n_examples=0", "settings.n_boot=50")
    first, _, first_saved = _run(input_sensitive_model, tmp_path / "a", "settings.noise_seed=0", *options)
    again, _, again_saved = _run(input_sensitive_model, tmp_path / "b", "settings.noise_seed=0", *options)
    other, _, other_saved = _run(input_sensitive_model, tmp_path / "c", "settings.noise_seed=1", *options)

    assert again == first
    np.testing.assert_array_equal(again_saved["correct"], first_saved["correct"])
    np.testing.assert_array_equal(other_saved["correct"][0], first_saved["correct"][0]), "clean images do not depend on the seed"
    assert not np.array_equal(other_saved["correct"][1:], first_saved["correct"][1:]), "seed 1 draws other noise"


def test_example_panel_labels_each_image_with_the_prediction_on_that_noisy_image(input_sensitive_model, tmp_path):
    trial = _trial(input_sensitive_model, "settings.variances=[0.05]", "settings.example_variances=[0.05, 0.3]", "settings.n_examples=5")
    reporter = LocalReporter(tmp_path)
    noise.run(trial, reporter)

    model, data = load_model_and_data(trial)
    images, labels = data.test.images[:5], data.test.labels[:5]
    expected = expected_labels(data.dataset.classes, labels, predict_logits(model, images).argmax(dim=1))
    for variance in (0.05, 0.3):  # the noise the accuracy was measured on: image i gets (noise seed, i)
        noisy = add_gaussian_noise(images, variance, seed=0)
        expected += expected_labels(data.dataset.classes, labels, predict_logits(model, noisy).argmax(dim=1))
    shown = prediction_texts(reporter.drawn["noise_examples.png"])
    assert sorted(shown) == sorted(expected) and len(shown) == 15, "one label per image shown, green right, red wrong"


@pytest.mark.parametrize(
    "override, key",
    [("settings.variances=[0.1, -0.01]", "settings.variances"), ("settings.example_variances=[-1]", "settings.example_variances")],
)
def test_negative_variance_fails_at_spec_load_naming_the_key(override, key):
    with pytest.raises(SpecError, match=re.escape(key) + r".*>= 0.*got -"):
        resolve_spec({"name": "t", "experiment": "noise"}, [override])


def test_report_averages_repeats_per_model_then_gives_the_ci_over_models():
    """report() on an MLflow-like frame: 2 models x 3 noise seeds, variances 0 and 0.1."""
    accuracy = {("m1", 0): 0.60, ("m1", 1): 0.62, ("m1", 2): 0.64, ("m2", 0): 0.50, ("m2", 1): 0.55, ("m2", 2): 0.57}
    spec = resolve_spec(
        {"name": "t", "experiment": "noise"}, ["settings.n_examples=0", "settings.n_boot=500", "settings.variances=[0, 0.1]"]
    )
    runs = trial_tables.table(
        spec,
        [
            trial_tables.record(
                spec,
                {"settings.noise_seed": seed},
                {
                    "test_acc": 0.8,
                    "acc_var_0": 0.8,
                    "acc_var_0.1": value,
                    "mcnemar_b_var_0.1": 5.0,
                    "mcnemar_c_var_0.1": 1.0,
                    "mcnemar_p_var_0.1": 0.2 if seed else 0.01,
                    "acc_var_0.1/subject_ci_low": value - 0.1,
                    "acc_var_0.1/subject_ci_high": value + 0.1,
                },
                source_model=model,
            )
            for (model, seed), value in accuracy.items()
        ],
    )
    report = noise.report(runs)
    markdown, figures, parent_metrics = report.markdown, report.figures, report.metrics

    per_model = [np.mean([0.60, 0.62, 0.64]), np.mean([0.50, 0.55, 0.57])]
    summary = mean_ci(per_model, bounds=(0.0, 1.0))
    assert summary["high"] == 1.0, "the plain t interval over two models reaches 1.09: clipped to [0, 1]"
    assert f"| 0.1 | 0.3162 | 80.6 | {summary['mean']:.3f} [{summary['low']:.3f}–{summary['high']:.3f}] | 2 | 0.2 |" in markdown
    assert "| model 2 | 3 | 0.550 | 0.500 | 0.570 | 0.540 |" in markdown
    assert "| all models | 6 | 0.585 | 0.500 | 0.640 | 0.580 |" in markdown
    assert parent_metrics["median_acc_var_0.1"] == pytest.approx(np.median(list(accuracy.values())))
    assert "p < 0.05 in 2 of 6 repeats" in markdown
    assert set(figures) == {"accuracy_vs_variance.png", "repeats_var_0.1.png"}


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_noise_sig_sweep_end_to_end(input_sensitive_model, tmp_path, monkeypatch):
    sweep = run_sweep(
        "noise_sig",
        tmp_path,
        monkeypatch,
        f"source.model={input_sensitive_model}",
        "search.grid={settings.noise_seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}",
        "settings.n_boot=200",
        "settings.n_examples=2",
    )
    parent, children = sweep.parent, sweep.children
    assert len(children) == 10 and set(children["status"]) == {"FINISHED"}
    assert sorted(children["params.settings.noise_seed"].astype(int)) == list(range(10))
    accuracies = children["metrics.acc_var_0.1"].astype(float)
    assert accuracies.between(0, 1).all()
    assert children["metrics.test_acc"].nunique() == 1, "every repeat scores the same clean images"

    folder = sweep.report_folder
    report = sweep.report()
    assert (folder / "repeats_var_0.1.png").is_file() and "![repeats_var_0.1.png](repeats_var_0.1.png)" in report
    summary = {name: float(getattr(np, name)(accuracies)) for name in ("median", "min", "max", "mean")}
    row = next(line for line in report.splitlines() if line.startswith("| model 1 | 10 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:6] == [f"{summary[name]:.3f}" for name in ("median", "min", "max", "mean")]
    for name, value in summary.items():
        assert parent[f"metrics.{name}_acc_var_0.1"] == pytest.approx(value)
    low, high = (float(x) for x in cells[6].split("–"))
    assert low <= summary["median"] <= high, "bootstrap CI of the median over repeats"
    first = children[children["params.settings.noise_seed"] == "0"].iloc[0]
    assert f"{first['metrics.acc_var_0.1/subject_ci_low']:.3f}–{first['metrics.acc_var_0.1/subject_ci_high']:.3f} (seed 0)" in row

    # McNemar per repeat: one table row each, with MLflow's b, c and p
    for _, child in children.iterrows():
        seed = int(child["params.settings.noise_seed"])
        expected = (
            f"| model 1 | {seed} | {child['metrics.test_acc']:.3f} | {child['metrics.acc_var_0.1']:.3f} | "
            f"{int(child['metrics.mcnemar_b_var_0.1'])} | {int(child['metrics.mcnemar_c_var_0.1'])} | {child['metrics.mcnemar_p_var_0.1']:.3g} |"
        )
        assert expected in report
    significant = int((children["metrics.mcnemar_p_var_0.1"] < 0.05).sum())
    assert f"p < 0.05 in {significant} of 10 repeats" in report
    assert "median 0.67, min 0.65, max 0.68" in report, "the reference study's numbers, labelled, for comparison"
    assert (folder / "noise_examples.png").is_file()
