"""The t-SNE experiment: run() on a tiny trained model, and its sweep end to end (Ray + MLflow)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import trial_tables
from conftest import TINY
from e2e import run_sweep
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.embedding import EmbeddingError, embedding_quality, extract_features
from fer_ray.core.model_file import load_model
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import tsne
from fer_ray.experiments.base import LocalReporter, Trial
from fer_ray.orchestrate.spec import SpecError, resolve_spec


def _trial(model_file: Path, *overrides: str) -> Trial:
    spec = resolve_spec({"name": "t", "experiment": "tsne"}, [*TINY, *overrides])
    return Trial(sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=model_file)


def _embedding(reporter: LocalReporter) -> dict:
    [(path, folder)] = reporter.artifacts
    assert folder == tsne.EMBEDDING_FOLDER and path.name == tsne.EMBEDDING_FILE
    with np.load(path, allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def test_run_embeds_the_test_features_in_2d_and_3d(tiny_trained_model, tmp_path):
    trial = _trial(tiny_trained_model, "settings.perplexity=5")
    reporter = LocalReporter(tmp_path)
    metrics = tsne.run(trial, reporter)

    data = prepare_data(trial.data)
    test = data.test
    saved = _embedding(reporter)
    assert saved["coords_2d"].shape == (len(test), 2) and saved["coords_3d"].shape == (len(test), 3)
    assert np.isfinite(saved["coords_2d"]).all() and np.isfinite(saved["coords_3d"]).all()
    assert np.array_equal(saved["labels"], test.labels.numpy())
    assert set(saved["groups"]) == {"F", "M"}, "markers by gender (the default)"
    for name in ("trustworthiness_2d", "knn_acc_2d", "trustworthiness_3d", "knn_acc_3d", "knn_acc_features", "test_acc"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["n_images"] == len(test) and metrics["feature_dim"] == 512
    # the logged metrics describe the saved embedding of the model's own features
    features = extract_features(load_model(tiny_trained_model)[0], test.images)
    people = data.dataset.identities[test.indices]  # k-NN neighbours come from other people only
    assert embedding_quality(features, saved["coords_2d"], saved["labels"], people, k=5) == {
        "trustworthiness": pytest.approx(metrics["trustworthiness_2d"]),
        "knn_accuracy": pytest.approx(metrics["knn_acc_2d"]),
    }
    assert set(reporter.figures) == {"tsne_2d.png", "tsne_3d.png"}
    assert all(path.stat().st_size > 0 for path in reporter.figures.values())


def test_perplexity_must_be_below_the_number_of_images(tiny_trained_model, tmp_path):
    n_test = len(prepare_data(_trial(tiny_trained_model).data).test)
    with pytest.raises(EmbeddingError, match=rf"settings\.perplexity={n_test}.*number of images embedded \({n_test}, splits \['test'\]\)"):
        tsne.run(_trial(tiny_trained_model, f"settings.perplexity={n_test}"), LocalReporter(tmp_path))
    assert not (tmp_path / tsne.EMBEDDING_FILE).exists(), "nothing written"

    # with the training images added the same perplexity is fine; the split is the marker
    reporter = LocalReporter(tmp_path / "both")
    metrics = tsne.run(
        _trial(
            tiny_trained_model,
            f"settings.perplexity={n_test}",
            "settings.splits=[test, train]",
            "settings.dims=[2]",
            "settings.marker_by=split",
        ),
        reporter,
    )
    saved = _embedding(reporter)
    assert metrics["n_images"] == len(saved["coords_2d"]) > n_test
    assert (saved["groups"] == "test").sum() == n_test and set(saved["groups"]) == {"test", "train"}
    assert "knn_acc_3d" not in metrics


@pytest.mark.parametrize(
    "override, key",
    [
        ("settings.perplexity=0", "settings.perplexity"),
        ("settings.dims=[2, 4]", "settings.dims"),
        ("settings.splits=[test, test]", "settings.splits"),
    ],
)
def test_bad_eval_values_fail_at_spec_load_naming_the_key(override, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        resolve_spec({"name": "t", "experiment": "tsne"}, [override])


def test_report_puts_each_models_knn_accuracy_and_the_mean_over_models_on_the_parent():
    spec = resolve_spec({"name": "t", "experiment": "tsne", "search": {"grid": {"settings.perplexity": [5, 10]}}}, ["settings.dims=[2]"])
    knn = {("m1", 5): 0.40, ("m1", 10): 0.50, ("m2", 5): 0.30, ("m2", 10): 0.60}
    runs = trial_tables.table(
        spec,
        [
            trial_tables.record(
                spec,
                {"settings.perplexity": perplexity, "train.seed": seed},
                {"trustworthiness_2d": 0.9, "knn_acc_2d": value, "knn_acc_features": 0.7 - 0.1 * seed, "test_acc": 0.8},
                source_model=model,
            )
            for (model, perplexity), value in knn.items()
            for seed in [int(model[1]) - 1]
        ],
    )
    metrics = tsne.report(runs).metrics
    summary = mean_ci([0.40, 0.30], bounds=(0.0, 1.0))
    assert metrics["mean_knn_acc_2d/perplexity_5"] == pytest.approx(0.35)
    assert (metrics["mean_knn_acc_2d/perplexity_5/ci_low"], metrics["mean_knn_acc_2d/perplexity_5/ci_high"]) == pytest.approx(
        (summary["low"], summary["high"])
    )
    assert metrics["mean_knn_acc_2d/perplexity_10"] == pytest.approx(0.55)
    assert metrics["knn_acc_2d/train_seed_0/perplexity_10"] == 0.50 and metrics["knn_acc_2d/train_seed_1/perplexity_5"] == 0.30
    assert metrics["mean_knn_acc_features"] == pytest.approx(0.65) and metrics["knn_acc_features/train_seed_1"] == pytest.approx(0.6)
    assert metrics["mean_test_acc"] == pytest.approx(0.8)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert all(re.fullmatch(r"[\w\-. /:]+", name) for name in metrics), "MLflow-safe names"


@pytest.mark.slow
def test_tsne_sweep_end_to_end(tiny_trained_model, tmp_path, monkeypatch):
    sweep = run_sweep(
        "tsne",
        tmp_path,
        monkeypatch,
        f"source.model={tiny_trained_model}",
        "search.grid={settings.perplexity: [5, 10]}",
        "settings.dims=[2]",
    )
    children = sweep.children
    assert len(children) == 2 and set(children["status"]) == {"FINISHED"}, "one trial per perplexity"
    assert sorted(children["params.settings.perplexity"].astype(float)) == [5.0, 10.0]
    assert children["metrics.trustworthiness_2d"].between(0, 1).all() and children["metrics.knn_acc_2d"].between(0, 1).all()
    for run_id in children["run_id"]:
        artifacts = sweep.artifacts(run_id, "tsne")
        assert {"tsne_2d.png", "tsne/embedding.npz"} <= artifacts and "tsne_3d.png" not in artifacts

    report = sweep.report()
    for _, child in children.iterrows():
        row = f"| {float(child['params.settings.perplexity']):g} | {child['metrics.trustworthiness_2d']:.3f} [-] | {child['metrics.knn_acc_2d']:.3f} [-] |"
        assert row in report, row
    assert (sweep.report_folder / "tsne_2d_by_perplexity.png").is_file() and "![tsne_2d_by_perplexity.png]" in report

    # the parent run carries the headline numbers: one model, so its k-NN accuracy is the mean (no CI)
    parent = sweep.parent_metrics()
    for _, child in children.iterrows():
        perplexity = f"{float(child['params.settings.perplexity']):g}"
        assert parent[f"mean_knn_acc_2d/perplexity_{perplexity}"] == pytest.approx(child["metrics.knn_acc_2d"])
        assert parent[f"knn_acc_2d/model_1/perplexity_{perplexity}"] == pytest.approx(child["metrics.knn_acc_2d"])
        assert parent[f"mean_trustworthiness_2d/perplexity_{perplexity}"] == pytest.approx(child["metrics.trustworthiness_2d"])
    assert parent["mean_knn_acc_features"] == pytest.approx(children["metrics.knn_acc_features"].iloc[0])
    assert parent["mean_test_acc"] == pytest.approx(children["metrics.test_acc"].iloc[0])
    assert not any(name.endswith("/ci_low") for name in parent), "one model: no interval over models"


@pytest.mark.slow
def test_report_reads_the_embeddings_through_a_tracking_server(tiny_trained_model, mlflow_server, tmp_path):
    """On a cluster the runs' artifacts sit behind an http server (mlflow-artifacts:/ URIs, nothing on
    the driver's disk): the report still draws every perplexity's embedding, fetched through the server."""
    from fer_ray.orchestrate.report import FETCHED, write_report
    from fer_ray.orchestrate.tracking import Tracker, flatten

    spec = resolve_spec(
        {"name": "tsne-remote", "experiment": "tsne", "search": {"grid": {"settings.perplexity": [5, 8]}}},
        [*TINY, "settings.dims=[2]", f"source.model={tiny_trained_model}"],
    )
    tracker = Tracker(mlflow_server.uri, "tsne-remote-report")
    tracker.check()
    parent = tracker.parent_run(spec.name, "tsne-remote-1", tags={})
    for perplexity in (5, 8):
        trial = _trial(tiny_trained_model, f"settings.perplexity={perplexity}", "settings.dims=[2]")
        reporter = LocalReporter(tmp_path / f"p{perplexity}")
        metrics = tsne.run(trial, reporter)
        child = tracker.child_run(
            parent,
            f"p{perplexity}",
            f"perplexity={perplexity}",
            params=flatten({"settings": trial.settings.model_dump(mode="json")}),
            tags={"fer_ray.source_model": str(tiny_trained_model)},
        )
        tracker.log_metrics(child, metrics)
        for path, folder in reporter.artifacts:
            tracker.log_artifact(child, path, folder)
        tracker.finish(child)
    runs = tracker.children(parent)
    assert runs["artifact_uri"].str.startswith("mlflow-artifacts:").all(), "artifacts only reachable through the server"

    folder = write_report(spec, tracker, parent, tmp_path / "report")
    report = (folder / "report.md").read_text()
    assert (folder / "tsne_2d_by_perplexity.png").stat().st_size > 0 and "![tsne_2d_by_perplexity.png]" in report
    assert "missing" not in report
    assert not (folder / FETCHED).exists(), "downloaded embeddings are not left in the report folder"

    # a run without the artifact is counted, not fatal
    empty = tracker.child_run(
        parent, "p9", "perplexity=9", params={"settings.perplexity": 9}, tags={"fer_ray.source_model": str(tiny_trained_model)}
    )
    tracker.log_metrics(empty, {"trustworthiness_2d": 0.5, "knn_acc_2d": 0.5})
    tracker.finish(empty)
    report = (write_report(spec, tracker, parent, tmp_path / "report2") / "report.md").read_text()
    assert "Embeddings missing from the artifact store for 1 run(s)" in report
