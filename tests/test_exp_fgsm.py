"""The FGSM / PGD experiment: run() with a LocalReporter on the tiny trained model, spec validation,
and the epsilon sweep end to end (real local Ray, real MLflow on sqlite)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import trial_tables
from conftest import TINY
from e2e import run_sweep
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.evaluate import as_float_images, evaluate_model, predict_logits
from fer_ray.core.model_file import load_model
from fer_ray.core.robustness import fgsm_perturb, input_gradient_sign
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import fgsm
from fer_ray.experiments.base import LocalReporter, Trial, load_model_and_data
from fer_ray.orchestrate.spec import SpecError, resolve_spec
from figure_texts import expected_labels, prediction_texts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny tensors run faster on one thread


def _trial(model_file: Path, *overrides: str) -> Trial:
    spec = resolve_spec({"name": "t", "experiment": "fgsm"}, [*TINY, *overrides])
    return Trial(sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=model_file)


def test_fgsm_run_scores_every_epsilon_and_draws_the_panel(tiny_trained_model, tmp_path):
    reporter = LocalReporter(tmp_path)
    metrics = fgsm.run(
        _trial(tiny_trained_model, "settings.epsilons=[0, 0.01, 0.1]", "settings.panel_epsilons=[0, 0.3]", "settings.n_panel_images=2"),
        reporter,
    )
    assert set(metrics) == {"test_acc", "acc_eps_0", "acc_eps_0.01", "acc_eps_0.1", "acc_eps_0.3"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["acc_eps_0"] == metrics["test_acc"], "epsilon 0 leaves the images as they are"
    data = prepare_data(_trial(tiny_trained_model).data)
    model, _ = load_model(tiny_trained_model)
    assert metrics["test_acc"] == pytest.approx(evaluate_model(model, data.test, data.dataset)["accuracy"])

    ((artifact, folder),) = reporter.artifacts
    saved = np.load(artifact)
    assert folder == fgsm.ARTIFACT_DIR and list(saved["epsilons"]) == [0.0, 0.01, 0.1, 0.3]
    assert saved["correct"].mean(axis=1) == pytest.approx([metrics[f"acc_eps_{e}"] for e in ("0", "0.01", "0.1", "0.3")])
    assert reporter.tag_values["fer_ray.eps255_0.01"] == "2.55" and reporter.tag_values["fer_ray.attack"] == "fgsm"
    for name in ("adversarial_panel.png", "accuracy_vs_epsilon.png"):
        assert reporter.figures[name].read_bytes()[:8] == PNG_MAGIC


def test_adversarial_panel_labels_each_image_with_its_true_and_predicted_class(tiny_trained_model, tmp_path):
    trial = _trial(tiny_trained_model, "settings.epsilons=[0]", "settings.panel_epsilons=[0, 0.1]", "settings.n_panel_images=4")
    reporter = LocalReporter(tmp_path)
    fgsm.run(trial, reporter)

    # the model's predictions on the very images shown: clean, then FGSM at 0.1 (recomputed here)
    model, data = load_model_and_data(trial)
    images, labels = as_float_images(data.test.images[:4]), data.test.labels[:4]
    sign = input_gradient_sign(model, images, labels)
    expected = []
    for epsilon in (0.0, 0.1):
        predicted = predict_logits(model, fgsm_perturb(images, sign, epsilon)).argmax(dim=1)
        expected += expected_labels(data.dataset.classes, labels, predicted)
    shown = prediction_texts(reporter.drawn["adversarial_panel.png"])
    assert sorted(shown) == sorted(expected) and len(shown) == 8, "one label per image shown, green right, red wrong"


def test_pgd_is_an_option_of_the_same_experiment(tiny_trained_model, tmp_path):
    common = ("settings.epsilons=[0, 0.05]", "settings.panel_epsilons=[]", "settings.n_panel_images=0")
    fgsm_metrics = fgsm.run(_trial(tiny_trained_model, *common), LocalReporter(tmp_path / "fgsm"))
    reporter = LocalReporter(tmp_path / "pgd")
    pgd_metrics = fgsm.run(_trial(tiny_trained_model, *common, "settings.attack=pgd", "settings.pgd_steps=3"), reporter)
    assert pgd_metrics["test_acc"] == fgsm_metrics["test_acc"]
    assert 0.0 <= pgd_metrics["acc_eps_0.05"] <= 1.0
    assert reporter.tag_values["fer_ray.attack"] == "pgd (3 steps)"
    assert "adversarial_panel.png" not in reporter.figures


@pytest.mark.parametrize(
    "override, key",
    [("settings.epsilons=[0.01, 1.5]", "settings.epsilons"), ("settings.panel_epsilons=[-0.1]", "settings.panel_epsilons")],
)
def test_epsilon_outside_unit_interval_fails_at_spec_load_naming_the_key(override, key):
    with pytest.raises(SpecError, match=re.escape(key) + r".*outside \[0, 1\]"):
        resolve_spec({"name": "t", "experiment": "fgsm"}, [override])


def test_unknown_attack_is_rejected():
    with pytest.raises(SpecError, match=r"settings\.attack"):
        resolve_spec({"name": "t", "experiment": "fgsm"}, ["settings.attack=cw"])


def test_report_table_gives_mean_and_ci_over_models_with_eps255_and_the_seed_number():
    spec = resolve_spec({"name": "t", "experiment": "fgsm"}, ["settings.epsilons=[0, 0.01]", "settings.panel_epsilons=[]"])
    runs = trial_tables.table(
        spec,
        [
            trial_tables.record(spec, {}, {"test_acc": clean, "acc_eps_0": clean, "acc_eps_0.01": attacked}, source_model=model)
            for model, clean, attacked in (("m1", 0.9, 0.40), ("m2", 0.8, 0.30), ("m3", 0.85, 0.20))
        ],
    )
    report = fgsm.report(runs)
    markdown, figures, parent_metrics = report.markdown, report.figures, report.metrics
    summary = mean_ci([0.40, 0.30, 0.20])
    assert f"| fgsm | 0.01 | 2.55 | 0.300 [{summary['low']:.3f}–{summary['high']:.3f}] | 3 | 0.38 |" in markdown
    assert "| fgsm | 0 | 0 | 0.850 [" in markdown
    assert parent_metrics == pytest.approx({"mean_acc_eps_0": 0.85, "mean_acc_eps_0.01": 0.30})
    assert set(figures) == {"accuracy_vs_epsilon_fgsm.png"}


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_epsilon_sweep_end_to_end_report_matches_mlflow(tiny_trained_model, tmp_path, monkeypatch):
    sweep = run_sweep(
        "epsilon",
        tmp_path,
        monkeypatch,
        f"source.model={tiny_trained_model}",
        "settings.epsilons=[0, 0.01, 0.1]",
        "settings.panel_epsilons=[0, 0.1]",
        "settings.n_panel_images=2",
    )
    parent, children = sweep.parent, sweep.children
    assert len(children) == 1 and children["status"].iloc[0] == "FINISHED", "one model, all epsilons in one trial"
    child = children.iloc[0]
    assert {"adversarial_panel.png", "accuracy_vs_epsilon.png", fgsm.ARTIFACT_DIR} <= sweep.artifacts(child["run_id"])

    report = sweep.report()
    rows = {float(m.group(1)): m for m in re.finditer(r"^\| fgsm \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \[-\] \| 1 \|", report, re.M)}
    assert sorted(rows) == [0.0, 0.01, 0.1]
    for epsilon, match in rows.items():
        value = child[f"metrics.acc_eps_{epsilon:g}"]
        assert match.group(3) == f"{value:.3f}"
        assert float(match.group(2)) == pytest.approx(epsilon * 255)
        assert parent[f"metrics.mean_acc_eps_{epsilon:g}"] == pytest.approx(value)
    assert "| fgsm | 0.01 | 2.55 |" in report and "| 0.38 |" in report, "the reference study's number beside ours"
    assert (sweep.report_folder / "accuracy_vs_epsilon_fgsm.png").is_file()
