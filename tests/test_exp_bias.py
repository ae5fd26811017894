"""The bias experiment: run() on a tiny trained model, the report's aggregation, the sweep end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trial_tables
from conftest import TINY
from e2e import run_sweep
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.data.records import EXPRESSIONS
from fer_ray.core.evaluate import evaluate_model
from fer_ray.core.model_file import load_model
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import bias
from fer_ray.experiments.base import LocalReporter, Trial
from fer_ray.orchestrate.spec import resolve_spec


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


def test_differences_are_signed_from_the_reference_and_tested_per_person(bias_run):
    _, reporter, metrics = bias_run
    references = json.loads(reporter.tag_values[bias.TAG_REFERENCE])
    assert references["gender"] == "M", "the conventional reference: differences read F - M"
    assert json.loads(reporter.tag_values[bias.TAG_DESIGN]) == {"gender": "between", "session": "within"}
    for attribute, groups in (("gender", ("F", "M")), ("session", ("A", "B"))):
        reference = references[attribute]
        [other] = [g for g in groups if g != reference]
        name = f"{attribute}/{other}"
        assert metrics[f"acc_diff/{name}"] == pytest.approx(metrics[f"acc/{name}"] - metrics[f"acc/{attribute}/{reference}"])
        assert -1 <= metrics[f"acc_diff_low/{name}"] <= metrics[f"acc_diff_high/{name}"] <= 1
        assert 0 < metrics[f"p_value/{name}"] <= 1 and metrics[f"p_holm/{name}"] == metrics[f"p_value/{name}"]
        assert metrics[f"p_omnibus/{attribute}"] == metrics[f"p_value/{name}"], "two groups: the one difference is the test"
        assert f"acc_diff/{attribute}/{reference}" not in metrics
        for group in groups:
            assert 0 <= metrics[f"acc_low/{attribute}/{group}"] <= metrics[f"acc_high/{attribute}/{group}"] <= 1
        assert not any(key.startswith(("acc_gap", "acc_ratio", "tpr_gap", "fpr_gap")) for key in metrics), "no max-minus-min"
        for rate in ("tpr", "fpr"):
            compared = [c for c in EXPRESSIONS if f"{rate}_diff/{name}/{c}" in metrics]
            assert compared, (attribute, rate)
            for c in compared:
                difference = metrics[f"{rate}/{name}/{c}"] - metrics[f"{rate}/{attribute}/{reference}/{c}"]
                assert metrics[f"{rate}_diff/{name}/{c}"] == pytest.approx(difference), (rate, name, c)
                assert 0 < metrics[f"{rate}_p_holm/{name}/{c}"] <= 1


def test_a_configured_reference_is_used_and_an_unknown_one_named(tiny_trained_model, tmp_path):
    trial = _trial(tiny_trained_model, "settings.attributes=[gender]", "settings.reference={gender: F}", "settings.class_rates=false")
    reporter = LocalReporter(tmp_path)
    metrics = bias.run(trial, reporter)
    assert json.loads(reporter.tag_values[bias.TAG_REFERENCE]) == {"gender": "F"}
    assert metrics["acc_diff/gender/M"] == pytest.approx(metrics["acc/gender/M"] - metrics["acc/gender/F"])
    with pytest.raises(ValueError, match=r"settings.reference.gender='X' is not a group of the test split; groups: \['F', 'M'\]"):
        bias.run(_trial(tiny_trained_model, "settings.attributes=[gender]", "settings.reference={gender: X}"), LocalReporter(tmp_path))


def test_report_of_one_model_shows_its_subject_intervals_and_of_several_the_spread_over_models(bias_run):
    trial, reporter, metrics = bias_run
    spec = _spec("settings.attributes=[gender, session, angle]")
    tags = dict(reporter.tag_values)
    reference = json.loads(tags[bias.TAG_REFERENCE])["gender"]
    other = "F" if reference == "M" else "M"
    report = bias.report(trial_tables.table(spec, [trial_tables.record(spec, {}, metrics, tags=tags)]))
    markdown, figures, parent_metrics = report.markdown, report.figures, report.metrics
    name = f"gender/{other}"
    assert "over test people: subject-clustered bootstrap" in markdown
    assert f"### gender: reference {reference} (each person in one group)" in markdown
    assert (
        f"| {other} | 1 | {metrics[f'n/{name}']:.0f} | {metrics[f'acc/{name}']:.3f} | "
        f"{metrics[f'acc_low/{name}']:.3f}–{metrics[f'acc_high/{name}']:.3f} | {metrics[f'acc_diff/{name}']:+.3f} |"
    ) in markdown
    assert f"| {reference} | 1 |" in markdown and "(reference)" in markdown
    assert "Skipped attributes: angle: one group only (S)." in markdown
    assert parent_metrics[f"acc_diff/{name}"] == pytest.approx(metrics[f"acc_diff/{name}"])
    assert set(figures) == {"bias_accuracy_by_group.png"}

    shifted = {**metrics, f"acc/{name}": min(1.0, metrics[f"acc/{name}"] + 0.2)}
    records = [trial_tables.record(spec, {}, m, tags=tags, run_id=f"run{i}") for i, m in enumerate((metrics, shifted))]
    markdown = bias.report(trial_tables.table(spec, records)).markdown
    assert "Models: 2. Cells: means over the 2 models" in markdown and "over training seeds" in markdown
    mean = (metrics[f"acc/{name}"] + shifted[f"acc/{name}"]) / 2
    assert f"| {other} | 1 | {metrics[f'n/{name}']:.0f} | {mean:.3f} | " in markdown
    spread = mean_ci([metrics[f"acc/{name}"], shifted[f"acc/{name}"]], bounds=(0.0, 1.0))
    assert f"{spread['low']:.3f}–{spread['high']:.3f}" in markdown and 0 <= spread["low"] and spread["high"] <= 1


@pytest.mark.slow
def test_bias_sweep_end_to_end(tiny_trained_model, tmp_path, monkeypatch):
    sweep = run_sweep("bias", tmp_path, monkeypatch, f"source.model={tiny_trained_model}", "settings.n_boot=200", "settings.n_perm=200")
    parent = sweep.parent
    [child] = [row for _, row in sweep.children.iterrows()]
    assert child["status"] == "FINISHED"
    assert child["metrics.n/gender/F"] + child["metrics.n/gender/M"] == child["metrics.n_test"]
    assert child["tags.fer_ray.bias_skipped"] == "race: not recorded by the dataset; angle: one group only (S)"
    assert "bias_accuracy.png" in sweep.artifacts(child["run_id"])
    reference = json.loads(child[f"tags.{bias.TAG_REFERENCE}"])["gender"]
    other = "F" if reference == "M" else "M"
    assert parent[f"metrics.acc_diff/gender/{other}"] == pytest.approx(child[f"metrics.acc_diff/gender/{other}"])

    folder = sweep.report_folder
    report = sweep.report()
    for group in ("F", "M"):
        name = f"gender/{group}"
        row = (
            f"| {group} | {child[f'metrics.people/{name}']:.0f} | {child[f'metrics.n/{name}']:.0f} | {child[f'metrics.acc/{name}']:.3f} | "
            f"{child[f'metrics.acc_low/{name}']:.3f}–{child[f'metrics.acc_high/{name}']:.3f} |"
        )
        assert row in report, row
    diff = f"| {child[f'metrics.acc_diff/gender/{other}']:+.3f} | {child[f'metrics.acc_diff_low/gender/{other}']:.3f}–"
    assert diff in report and f"| {child[f'metrics.p_value/gender/{other}']:.3g} |" in report
    assert "Skipped attributes: race: not recorded by the dataset; angle: one group only (S)." in report
    assert (folder / "bias_accuracy_by_group.png").is_file()
    assert not any(c.startswith(("metrics.acc_gap", "metrics.acc_ratio")) for c in sweep.runs.columns)
