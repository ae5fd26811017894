"""The transfer experiment: one trial with a LocalReporter, and the sweep end to end (real Ray, real
MLflow on sqlite) with runs, metrics and the report read back."""

from __future__ import annotations

import pytest

from conftest import TINY
from e2e import run_sweep
from fer_ray.core.transfer import load_generator
from fer_ray.experiments import get_experiment
from fer_ray.experiments.base import LocalReporter, Trial
from fer_ray.orchestrate.spec import resolve_spec

FAST = [
    "settings.width=8",
    "settings.epochs=2",
    "settings.val_pairs=16",
    "settings.n_boot=100",
    "settings.panel_people=2",
    "settings.critic_epochs=2",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny tensors run faster on one thread


def test_trial_logs_losses_metrics_panel_and_generator(tiny_trained_model, tmp_path):
    spec = resolve_spec({"name": "t", "experiment": "transfer"}, [*TINY, *FAST])
    trial = Trial(
        sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=tiny_trained_model
    )
    reporter = LocalReporter(tmp_path)
    metrics = get_experiment("transfer").run(trial, reporter)
    assert [step for step, _ in reporter.history] == [1, 2]
    assert {"gen_train_loss", "gen_train_l1", "gen_val_l1"} <= set(reporter.history[0][1])
    for name in ("transfer_target_acc", "transfer_identity_top1", "transfer_identity_top1_copy", "test_acc"):
        assert 0.0 <= metrics[f"{name}/subject_ci_low"] <= metrics[name] <= metrics[f"{name}/subject_ci_high"] <= 1.0
    assert metrics["transfer_l1_copy"] > 0 and metrics["transfer_l1_mean"] > 0
    assert metrics["transfer_cases"] == 42 * metrics["transfer_test_people"] * 2  # 2 sessions, 7 x 6 pairs each
    assert "transfer_target_acc/happy" in metrics
    assert "transfer_panel.png" in reporter.figures
    ((generator_file, folder),) = reporter.artifacts
    generator, classes = load_generator(generator_file)
    assert folder == "transfer" and generator.width == 8 and len(classes) == 7


@pytest.mark.slow
def test_transfer_sweep_end_to_end(tiny_trained_model, tmp_path, monkeypatch):
    sweep = run_sweep(
        "transfer", tmp_path, monkeypatch, *FAST, f"source.model={tiny_trained_model}", "search.grid={settings.width: [4, 8]}"
    )
    children = sweep.children
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}
    assert sorted(children["params.settings.width"].astype(int)) == [4, 8]
    assert children["metrics.transfer_target_acc"].between(0, 1).all()
    assert (children["metrics.transfer_l1_copy"] > 0).all()
    run_id = children.iloc[0]["run_id"]
    assert len(sweep.client.get_metric_history(run_id, "gen_train_loss")) == 2
    artifacts = sweep.artifacts(run_id, "transfer")
    assert "transfer/generator.pt" in artifacts and "transfer_panel.png" in artifacts
    report = sweep.report()
    assert "## Emotion transfer" in report and report.count("L1 below copy: gain") == 2
    assert report.count("vs >= 0.6: ") == 2 and report.count("vs >= 0.8: ") == 2  # each goal judged, with numbers
