"""The SVM experiment: its trials reproduce GridSearchCV exactly on the cached features, its folds are
subject-disjoint, features are cached once per node (safely under concurrency), and the sweep file
runs end to end with a report that holds the numbers in MLflow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GridSearchCV

import trial_tables
from conftest import TINY
from e2e import run_sweep
from fer_ray.core.data.cache import load_image_tensors
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.data.synthetic import synthetic_root
from fer_ray.core.evaluate import evaluate_model
from fer_ray.core.model_file import load_model
from fer_ray.core.svm import (
    model_features,
    param_grid,
    pipeline_params,
    pixel_features,
    svm_pipeline,
)
from fer_ray.experiments.base import LocalReporter, Trial
from fer_ray.experiments.svm import design as svm_design
from fer_ray.experiments.svm import features as svm_features
from fer_ray.experiments.svm import report as svm_report
from fer_ray.experiments.svm import settings as svm_settings
from fer_ray.experiments.svm import trial as svm_trial
from fer_ray.orchestrate.spec import SpecError, resolve_spec

#: a small grid with ties (linear ignores gamma) and a gamma given as a number
SMALL_GRID = {"C": [0.1, 10.0], "gamma": ["scale", 0.01], "kernel": ["rbf", "linear"]}


def _trial(model_file: Path, overrides: list[str] = ()) -> Trial:
    spec = resolve_spec({"name": "t", "experiment": "svm"}, TINY + ["settings.folds=3", "settings.pixel_size=16", *overrides])
    return Trial(sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=model_file)


def test_trials_over_the_grid_equal_grid_search_cv_on_the_cached_features(tiny_trained_model, tmp_path):
    base = _trial(tiny_trained_model)
    points = param_grid(**SMALL_GRID)
    reporters = [LocalReporter(tmp_path / f"point{i}") for i in range(len(points))]
    results = [
        svm_trial.run(replace(base, settings=base.settings.model_copy(update=point)), reporter)
        for point, reporter in zip(points, reporters)
    ]

    data = prepare_data(base.data)
    design = svm_design.cv_design(data, base.settings)
    features = svm_features.dataset_features(data, base.data, base.settings)  # the trials' cached file
    labels = data.dataset.labels
    pool_x, pool_y = features[design.pool_rows], labels[design.pool_rows]
    search = GridSearchCV(svm_pipeline(), pipeline_params(SMALL_GRID), cv=design.folds, scoring="accuracy")
    search.fit(pool_x, pool_y)
    reference = search.cv_results_

    assert [pipeline_params(p) for p in points] == reference["params"]
    for i, metrics in enumerate(results):
        assert metrics["cv_acc_mean"] == reference["mean_test_score"][i]
        assert metrics["cv_acc_std"] == reference["std_test_score"][i]
        for split in range(3):
            assert metrics[f"cv_acc_split{split}"] == reference[f"split{split}_test_score"][i]
    assert len({m["cv_acc_mean"] for m in results}) > 1, "the grid points differ, so the pick means something"

    # the report's pick (from MLflow-shaped rows) is GridSearchCV's, and its refit test accuracy its score
    spec = resolve_spec(
        {"name": "t", "experiment": "svm", "search": {"grid": {f"settings.{k}": v for k, v in SMALL_GRID.items()}}},
        TINY + ["settings.folds=3", "settings.pixel_size=16"],
    )
    runs = trial_tables.table(
        spec,
        [
            trial_tables.record(spec, {f"settings.{k}": v for k, v in point.items()}, metrics, run_id=f"r{i}")
            for i, (point, metrics) in reversed(list(enumerate(zip(points, results))))  # any order in, grid order out
        ],
    )
    best = svm_report.choose_best(svm_report.grid_results(runs)).iloc[0]
    assert pipeline_params({k: best[k] for k in ("C", "gamma", "kernel")}) == search.best_params_
    test_x, test_y = features[design.test_rows], labels[design.test_rows]
    assert best["test_acc"] == search.score(test_x, test_y)
    predicted = search.predict(test_x)
    best_tags = reporters[int(best["grid_index"])].tag_values
    assert json.loads(best_tags[svm_trial.TAG_CONFUSION]) == confusion_matrix(test_y, predicted, labels=range(7)).tolist()

    # the CNN and untuned SVM numbers are the same for every point, and are those of the model / SVC()
    cnn = evaluate_model(load_model(tiny_trained_model)[0], data.test, data.dataset)
    untuned = svm_pipeline().fit(pool_x, pool_y).score(test_x, test_y)
    assert {m["cnn_test_acc"] for m in results} == {cnn["accuracy"]}
    assert {m["untuned_test_acc"] for m in results} == {untuned}
    assert results[0]["n_pool"] + results[0]["n_test"] == len(data.dataset)  # train+val pool; test apart


@pytest.mark.parametrize("split_by", ["identity", "image"])
def test_no_identity_is_on_both_sides_of_any_fold(split_by):
    spec = resolve_spec({"name": "t", "experiment": "svm"}, TINY + ["settings.folds=4", f"data.split.by={split_by}"])
    data = prepare_data(spec.data)
    people = data.dataset.identities

    design = svm_design.cv_design(data, spec.experiment_settings())

    assert len(design.folds) == 4
    validated = np.sort(np.concatenate([val for _, val in design.folds]))
    np.testing.assert_array_equal(validated, np.arange(len(design.pool_rows)))  # each pool row once
    for train, val in design.folds:
        assert not set(people[design.pool_rows[train]]) & set(people[design.pool_rows[val]])
    expected_pool = np.sort(np.concatenate([data.train.indices, data.val.indices]))
    np.testing.assert_array_equal(design.pool_rows, expected_pool)
    assert not set(design.pool_rows) & set(design.test_rows)
    if split_by == "identity":
        assert not set(people[design.pool_rows]) & set(people[design.test_rows])
    without_val = svm_design.cv_design(data, spec.experiment_settings().model_copy(update={"include_val": False}))
    np.testing.assert_array_equal(without_val.pool_rows, np.sort(data.train.indices))


def test_features_are_cached_on_disk_and_loaded_from_there(tiny_trained_model, tmp_path):
    faces = synthetic_root(_trial(tiny_trained_model).data.synthetic)  # the TINY faces, already drawn
    trial = _trial(tiny_trained_model, [f"data.root={faces}", f"data.cache_dir={tmp_path / 'cache'}"])
    data = prepare_data(trial.data)
    cache_folder = tmp_path / "cache" / "svm" / "features"
    assert not cache_folder.exists()

    first = svm_features.dataset_features(data, trial.data, trial.settings)
    files = list(cache_folder.glob("*.npy"))
    assert len(files) == 1
    images = load_image_tensors(data.dataset, trial.data.image_size, trial.data.cache_dir)
    np.testing.assert_array_equal(first, pixel_features(images, 16))
    second = svm_features.dataset_features(data, trial.data, trial.settings)
    np.testing.assert_array_equal(second, first)
    np.save(files[0], np.full_like(first, 7.0))  # a second call reads the file, not the images
    assert (svm_features.dataset_features(data, trial.data, trial.settings) == 7.0).all()

    as_model = trial.settings.model_copy(update={"features": "model"})
    embedded = svm_features.dataset_features(data, trial.data, as_model, tiny_trained_model)
    model = load_model(tiny_trained_model)[0]
    assert embedded.shape == (len(data.dataset), model.feature_dim)
    np.testing.assert_allclose(embedded, model_features(model, images), rtol=1e-5, atol=1e-5)
    assert len(list(cache_folder.glob("*.npy"))) == 2  # keyed by feature kind (and the model's hash)
    assert not list(cache_folder.glob(".*tmp*"))


def test_bad_settings_name_the_keys(tiny_trained_model, tmp_path):
    with pytest.raises(SpecError, match=r"settings.gamma: .*'scale', 'auto' or a number > 0, got 'Scale'"):
        resolve_spec({"name": "t", "experiment": "svm"}, ["settings.gamma=Scale"])
    with pytest.raises(SpecError, match=r"settings.gamma: .*got -0.1"):
        resolve_spec({"name": "t", "experiment": "svm", "search": {"grid": {"settings.gamma": [0.1, -0.1]}}})
    assert resolve_spec({"name": "t", "experiment": "svm"}, ["settings.gamma=0.01"]).experiment_settings().gamma == 0.01
    with pytest.raises(svm_settings.SvmConfigError, match=r"settings.pixel_size=48 .* data.image_size=32"):
        svm_trial.run(_trial(tiny_trained_model, ["settings.pixel_size=48"]), LocalReporter(tmp_path))


@pytest.mark.slow
def test_svm_sweep_end_to_end(tiny_trained_model, tmp_path, monkeypatch):
    grid = ["search.grid.settings.C=[1, 100]", "search.grid.settings.gamma=[scale]", "search.grid.settings.kernel=[rbf, linear]"]
    sweep = run_sweep(
        "svm", tmp_path, monkeypatch, f"source.model={tiny_trained_model}", "settings.folds=3", "settings.pixel_size=16", *grid
    )
    parent = sweep.parent
    children = sweep.runs[sweep.runs["tags.fer_ray.role"] != "parent"]
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}, "2 C x 1 gamma x 2 kernels"
    assert children["metrics.cv_acc_split2"].between(0, 1).all()

    # the tuned SVM: best mean CV accuracy, ties to the first point in grid order (C slowest, kernel fastest)
    order = {(c, k): i for i, (c, k) in enumerate([(1.0, "rbf"), (1.0, "linear"), (100.0, "rbf"), (100.0, "linear")])}
    ranked = children.assign(
        order=[order[(float(c), k)] for c, k in zip(children["params.settings.C"], children["params.settings.kernel"])]
    )
    ranked = ranked.sort_values("order")
    best = ranked.iloc[int(np.argmax(ranked["metrics.cv_acc_mean"].to_numpy()))]  # argmax: the first of ties
    assert parent["metrics.svm_tuned_test_acc"] == best["metrics.test_acc"]
    assert parent["metrics.svm_tuned_cv_acc"] == best["metrics.cv_acc_mean"]
    assert parent["metrics.svm_untuned_test_acc"] == children["metrics.untuned_test_acc"].iloc[0]
    assert parent["metrics.cnn_test_acc"] == children["metrics.cnn_test_acc"].mean()
    assert children["metrics.untuned_test_acc"].nunique() == 1 and children["metrics.cnn_test_acc"].nunique() == 1

    report_dir = sweep.report_folder
    report = sweep.report()
    for metric in ("cnn_test_acc", "svm_tuned_test_acc", "svm_untuned_test_acc"):
        assert f"{parent[f'metrics.{metric}']:.3f}" in report
    assert f"C={float(best['params.settings.C']):g}, gamma=scale, kernel={best['params.settings.kernel']}" in report
    for png in ("svm_cv_heatmap.png", "svm_vs_cnn.png", "svm_confusion_matrix.png"):
        assert (report_dir / png).stat().st_size > 1000
    artifacts = {a.path for a in sweep.client.list_artifacts(parent["run_id"], "report")}
    assert "report/svm_cv_heatmap.png" in artifacts and "report/svm_vs_cnn.png" in artifacts
