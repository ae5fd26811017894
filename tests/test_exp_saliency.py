"""The saliency experiment: run() on a tiny trained model, image choice, and its sweep end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import trial_tables
from conftest import TINY
from e2e import run_sweep
from fer_ray.core.data.cache import load_image_tensors
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.data.records import DataError
from fer_ray.core.evaluate import predict_logits
from fer_ray.core.saliency_maps import center_mass_fraction, grad_cam
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import saliency
from fer_ray.experiments.base import LocalReporter, Trial, load_model_and_data
from fer_ray.orchestrate.spec import SpecError, resolve_spec
from figure_texts import expected_labels, prediction_texts


def _trial(model_file: Path, *overrides: str) -> Trial:
    spec = resolve_spec({"name": "t", "experiment": "saliency"}, [*TINY, *overrides])
    return Trial(sweep="t", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings(), model_file=model_file)


def test_named_images_get_one_png_each_from_any_split(tiny_trained_model, tmp_path):
    data = prepare_data(_trial(tiny_trained_model).data)
    test_stem = data.dataset.images[int(data.test.indices[0])].path.stem
    train_stem = data.dataset.images[int(data.split.train[3])].path.stem
    reporter = LocalReporter(tmp_path)
    metrics = saliency.run(_trial(tiny_trained_model, f"settings.images=[{test_stem.lower()}, {train_stem}]"), reporter)

    assert set(reporter.figures) == {f"saliency_{test_stem}.png", f"saliency_{train_stem}.png"}, "case-insensitive match"
    assert all(path.stat().st_size > 10_000 for path in reporter.figures.values())
    assert metrics["n_images"] == 2
    assert metrics["center_area"] == 0.25, "a 16 x 16 box in a 32 x 32 image"
    for name in ("selected_acc", "center_mass_vanilla", "center_mass_guided"):
        assert 0.0 <= metrics[name] <= 1.0, name
    # Grad-CAM at layer4 of a 32 px input is a 1 x 1 map: upsampled, any map puts exactly the box's
    # area in the box, so its central mass says nothing and is not reported; the tag says why, and
    # the all-zero maps (no positive evidence) are counted
    assert "center_mass_gradcam" not in metrics
    assert reporter.tag_values[saliency.TAG_CENTER_MASS_WITHHELD].startswith("gradcam: maps computed at 1x1")
    trial = _trial(tiny_trained_model)
    model, _ = load_model_and_data(trial)
    rows = torch.tensor([int(data.test.indices[0]), int(data.split.train[3])])
    images = load_image_tensors(data.dataset, trial.data.image_size, trial.data.cache_dir)[rows]
    cams = grad_cam(model, images, torch.from_numpy(data.dataset.labels[rows.numpy()]), "layer4")
    assert metrics["zero_maps_gradcam"] == int((cams.flatten(1).amax(dim=1) == 0).sum())
    assert metrics["zero_maps_vanilla"] == 0
    assert reporter.tag_values["fer_ray.saliency_images"] == f"{test_stem} {train_stem}"
    # each image is labelled with its true class and the model's prediction on it (green right, red wrong)
    predicted = predict_logits(model, images).argmax(dim=1)
    for stem, true, guess in zip((test_stem, train_stem), data.dataset.labels[rows.numpy()], predicted):
        assert prediction_texts(reporter.drawn[f"saliency_{stem}.png"]) == expected_labels(data.dataset.classes, [true], [guess])


def test_unknown_image_names_are_listed_in_one_error(tiny_trained_model, tmp_path):
    data = prepare_data(_trial(tiny_trained_model).data)
    known = data.dataset.images[int(data.test.indices[0])].path.stem
    with pytest.raises(DataError, match=r"settings\.images: no image file named \['XF99HAS', 'smile'\]"):
        saliency.run(_trial(tiny_trained_model, f"settings.images=[{known}, XF99HAS, smile]"), LocalReporter(tmp_path))
    assert not list(tmp_path.glob("*.png")), "nothing drawn"


def test_images_and_per_class_together_fail_at_spec_load():
    with pytest.raises(SpecError, match=r"settings\.: give settings\.images .* or settings\.per_class .*not both"):
        resolve_spec({"name": "t", "experiment": "saliency"}, ["settings.images=[AF01HAS]", "settings.per_class=2"])


def test_center_mass_fraction():
    maps = torch.zeros(3, 8, 8)
    maps[0] = 1.0  # even: the central 4 x 4 box holds a quarter
    maps[1, 3, 4] = 2.0  # all inside the box
    assert center_mass_fraction(maps[:2], 0.5).tolist() == [0.25, 1.0]
    assert math.isnan(center_mass_fraction(maps[2:], 0.5)[0]), "an empty map has no mass to place"


def test_report_puts_the_mean_central_mass_over_models_on_the_parent():
    spec = resolve_spec({"name": "t", "experiment": "saliency"}, [])
    values = {"m1": (0.40, 0.5, 1.0), "m2": (0.60, 0.7, 3.0)}  # center_mass_vanilla, selected_acc, zero_maps_gradcam
    runs = trial_tables.table(
        spec,
        [
            trial_tables.record(
                spec,
                {"train.seed": seed},
                {"n_images": 7.0, "selected_acc": acc, "center_area": 0.25, "center_mass_vanilla": mass, "zero_maps_gradcam": zeros},
                source_model=model,
            )
            for seed, (model, (mass, acc, zeros)) in enumerate(values.items())
        ],
    )
    metrics = saliency.report(runs).metrics
    summary = mean_ci([0.40, 0.60], bounds=(0.0, 1.0))
    assert metrics["mean_center_mass_vanilla"] == pytest.approx(0.5)
    assert (metrics["mean_center_mass_vanilla/ci_low"], metrics["mean_center_mass_vanilla/ci_high"]) == pytest.approx(
        (summary["low"], summary["high"])
    )
    assert metrics["center_mass_vanilla/train_seed_0"] == 0.40 and metrics["center_mass_vanilla/train_seed_1"] == 0.60
    assert metrics["mean_selected_acc"] == pytest.approx(0.6) and metrics["center_area"] == 0.25
    assert metrics["mean_zero_maps_gradcam"] == pytest.approx(2.0), "a count, not clipped to [0, 1]"
    assert "mean_n_images" not in metrics and "mean_center_mass_gradcam" not in metrics


@pytest.mark.slow
def test_saliency_sweep_end_to_end_per_class(tiny_trained_model, tmp_path, monkeypatch):
    sweep = run_sweep("saliency", tmp_path, monkeypatch, f"source.model={tiny_trained_model}", "settings.per_class=1")
    [child] = [row for _, row in sweep.children.iterrows()]
    assert child["status"] == "FINISHED" and child["metrics.n_images"] == 7
    # per_class 1: the first test image of every class, in class order
    data = prepare_data(_trial(tiny_trained_model).data)
    expected = [data.dataset.images[int(data.test.indices[data.test.labels == c][0])].path.stem for c in range(7)]
    artifacts = sweep.artifacts(child["run_id"])
    assert {f"saliency_{stem}.png" for stem in expected} == {a for a in artifacts if a.startswith("saliency_")}
    assert child["tags.fer_ray.saliency_images"] == " ".join(expected)

    report = sweep.report()
    cells = "7 | " + " | ".join(
        f"{child[f'metrics.{name}']:.3f}" for name in ("selected_acc", "center_area", "center_mass_vanilla", "center_mass_guided")
    )
    cells += " | " + " | ".join(f"{child[f'metrics.zero_maps_{name}']:.0f}" for name in ("vanilla", "guided", "gradcam"))
    assert f"| model 1 | {cells} |" in report
    assert "Central mass not reported: gradcam: maps computed at 1x1" in report

    # the parent run carries the headline numbers, read back through the MLflow client
    parent = sweep.parent_metrics()
    for name in ("center_mass_vanilla", "center_mass_guided", "selected_acc", "zero_maps_gradcam"):
        assert parent[f"mean_{name}"] == pytest.approx(child[f"metrics.{name}"]), name
    assert parent["center_mass_vanilla/model_1"] == pytest.approx(child["metrics.center_mass_vanilla"])
    assert parent["center_area"] == 0.25 and "mean_center_mass_gradcam" not in parent
