"""The bias experiment: run() on a tiny trained model, the report's aggregation, the sweep end to end."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

import trial_tables
from conftest import TINY
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.data.records import EXPRESSIONS
from fer_ray.core.evaluate import evaluate_model
from fer_ray.core.model_file import load_model
from fer_ray.experiments import bias
from fer_ray.experiments.base import LocalReporter, Trial
from fer_ray.orchestrate.spec import resolve_spec
from fer_ray.sweep import main

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def _spec(*overrides: str):
    return resolve_spec({"name": "t", "experiment": "bias"}, [*TINY, "settings.n_boot=200", "settings.n_perm=200", *overrides])


def _trial(model_file: Path, *overrides: str) -> Trial:
    spec = _spec(*overrides)
    return Trial(sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=model_file)


@pytest.fixture(scope="module")
def bias_run(tiny_trained_model, tmp_path_factory):
    """One run over gender (one person per group here), session (people in both groups) and angle
    (one group: skipped)."""
    trial = _trial(tiny_trained_model, "settings.attributes=[gender, session, angle]")
    reporter = LocalReporter(tmp_path_factory.mktemp("bias"))
    return trial, reporter, bias.run(trial, reporter)


def test_group_counts_add_up_and_accuracies_match_the_evaluator(bias_run, tiny_trained_model):
    trial, reporter, metrics = bias_run
    data = prepare_data(trial.data)
    assert metrics["n_test"] == len(data.test)
    for attribute, groups in (("gender", ("F", "M")), ("session", ("A", "B"))):
        assert sum(metrics[f"n/{attribute}/{g}"] for g in groups) == len(data.test), attribute
    reference = evaluate_model(load_model(tiny_trained_model)[0], data.test, data.dataset)
    assert metrics["test_acc"] == pytest.approx(reference["accuracy"])
    for group, values in reference["per_gender"].items():
        assert metrics[f"acc/gender/{group}"] == pytest.approx(values["acc"])
        assert metrics[f"n/gender/{group}"] == values["n"]
    assert not any(name.endswith("/angle") or "/angle/" in name for name in metrics), "one angle: skipped"
    assert reporter.tag_values[bias.TAG_SKIPPED] == "angle: one group only (S)"
    assert reporter.tag_values[bias.TAG_STUDIED] == "gender,session"
    assert set(reporter.figures) == {"bias_accuracy.png"}


def test_gaps_lie_in_their_intervals_and_class_rate_gaps_match_the_rates(bias_run):
    _, _, metrics = bias_run
    for attribute in ("gender", "session"):
        for statistic in ("acc_gap", "acc_ratio"):
            assert metrics[f"{statistic}_low/{attribute}"] <= metrics[f"{statistic}/{attribute}"] <= metrics[f"{statistic}_high/{attribute}"]
        for group in {"gender": ("F", "M"), "session": ("A", "B")}[attribute]:
            assert metrics[f"acc_low/{attribute}/{group}"] <= metrics[f"acc/{attribute}/{group}"] <= metrics[f"acc_high/{attribute}/{group}"]
    assert metrics["acc_gap/gender"] == pytest.approx(abs(metrics["acc/gender/F"] - metrics["acc/gender/M"]))
    assert metrics["acc_diff/gender"] == pytest.approx(metrics["acc/gender/F"] - metrics["acc/gender/M"])
    assert 0 < metrics["p_value/gender"] <= 1
    assert "p_value/session" not in metrics, "the same people are in both sessions: no per-person permutation"
    for rate in ("tpr", "fpr"):
        compared = [c for c in EXPRESSIONS if f"{rate}/gender/F/{c}" in metrics and f"{rate}/gender/M/{c}" in metrics]
        assert compared, rate
        for name in compared:
            difference = abs(metrics[f"{rate}/gender/F/{name}"] - metrics[f"{rate}/gender/M/{name}"])
            assert metrics[f"{rate}_gap/gender/{name}"] == pytest.approx(difference), (rate, name)


def test_report_averages_over_models(bias_run):
    trial, reporter, metrics = bias_run
    first = {f"metrics.{k}": v for k, v in metrics.items()}
    second = {**first, **{f"metrics.{k}/gender/F": first[f"metrics.{k}/gender/F"] + 0.2 for k in ("acc", "acc_low", "acc_high")}}
    spec = _spec("settings.attributes=[gender, session, angle]")
    tags = reporter.tag_values
    runs = trial_tables.table(spec, [trial_tables.record(spec, {}, {k[len("metrics."):]: v for k, v in row.items()}, tags=tags)
                                     for row in (first, second)])
    report = bias.report(runs)
    markdown, figures, parent_metrics = report.markdown, report.figures, report.metrics
    mean_f = [first[f"metrics.{k}/gender/F"] + 0.1 for k in ("acc", "acc_low", "acc_high")]
    assert f"| gender | F | {first['metrics.n/gender/F']:.0f} | {mean_f[0]:.3f} | {mean_f[1]:.3f}–{mean_f[2]:.3f} |" in markdown
    assert "Models: 2" in markdown and "Skipped attributes: angle: one group only (S)." in markdown
    assert parent_metrics["acc_gap/gender"] == pytest.approx(metrics["acc_gap/gender"])
    assert set(figures) == {"bias_accuracy_by_group.png"}


@pytest.mark.slow
def test_bias_sweep_end_to_end(tiny_trained_model, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        code = main([str(SWEEPS / "bias.yaml"), "--num-cpus", "2", "--tracking-uri", uri,
                     "--set", *TINY, f"source.model={tiny_trained_model}", "settings.n_boot=200", "settings.n_perm=200"])
    finally:
        ray.shutdown()
    assert code == 0

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    parent = runs[runs["tags.fer_ray.role"] == "parent"].iloc[0]
    [child] = [row for _, row in runs[runs["tags.fer_ray.role"] == "child"].iterrows()]
    assert child["status"] == "FINISHED"
    assert child["metrics.n/gender/F"] + child["metrics.n/gender/M"] == child["metrics.n_test"]
    assert child["tags.fer_ray.bias_skipped"] == "race: not recorded by the dataset; angle: one group only (S)"
    assert "bias_accuracy.png" in {a.path for a in mlflow.MlflowClient(uri).list_artifacts(child["run_id"])}
    assert parent["metrics.acc_gap/gender"] == pytest.approx(child["metrics.acc_gap/gender"])

    folder = tmp_path / "reports" / "bias"
    report = (folder / "report.md").read_text()
    for group in ("F", "M"):
        name = f"gender/{group}"
        row = (f"| gender | {group} | {child[f'metrics.n/{name}']:.0f} | {child[f'metrics.acc/{name}']:.3f} | "
               f"{child[f'metrics.acc_low/{name}']:.3f}–{child[f'metrics.acc_high/{name}']:.3f} |")
        assert row in report, row
    gap = "gender | {:.3f} | {:.3f}–{:.3f} |".format(*(child[f"metrics.{k}/gender"] for k in ("acc_gap", "acc_gap_low", "acc_gap_high")))
    assert gap in report and f"| {child['metrics.p_value/gender']:.3f} |" in report
    assert "Skipped attributes: race: not recorded by the dataset; angle: one group only (S)." in report
    assert (folder / "bias_accuracy_by_group.png").is_file()
    assert np.isfinite(child["metrics.acc_ratio/gender"]) or child["metrics.acc/gender/F"] == child["metrics.acc/gender/M"] == 0
