"""Saliency maps of a trained model: what it looks at when it names an expression.

Per chosen image one PNG ``saliency_<file stem>.png``: the image, the vanilla gradient map, the reference
study's four guided-backpropagation panels (grayscale, colour, positive, negative) and Grad-CAM at
``settings.gradcam_layer`` over the image; titled with the file name, its split and the predicted class's
probability, the image itself labelled "true happy / pred sad" (green when right, red when wrong). Maps are
taken for the true class (``settings.target: true_class``) or the predicted one (``predicted_class``), with
respect to the [0,1] input (normalisation is inside the model).

Images: ``settings.images`` (file name stems such as AF01HAS, case-insensitive, from any split; the title
says which) or ``settings.per_class: N`` (the first N held-out test images of each class, in dataset
order); neither: one per class. Metrics, averaged over the chosen images: ``center_mass_<map>``, the
fraction of the map's total mass inside the central box (side ``settings.center_fraction`` of the image
side), beside ``center_area``, that box's share of the pixels (what a uniform map would give), over
the maps that have any mass; ``zero_maps_<map>``: how many maps were all zero (counted, not
averaged); ``selected_acc`` (fraction of the chosen images predicted right) and ``n_images``. A
map kind whose resolution makes the central share uninformative (Grad-CAM at layer4 is 2x2 or
smaller at 33-64 px inputs: bilinear upsampling then puts exactly the box's area in the box, for
any map) gets no ``center_mass_<map>``; the tag ``fer_ray.center_mass_withheld`` says why. The report
puts the means over models (and each model's central mass) on the parent run (parent_metrics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from fer_ray.core.config import Strict
from fer_ray.core.data.records import DataError
from fer_ray.core.formatting import model_label, summary_cell
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable

if TYPE_CHECKING:  # annotations only
    from fer_ray.core.data.prepare import PreparedData

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
torch = lazy_module("torch")
cache = lazy_module("fer_ray.core.data.cache")
evaluate = lazy_module("fer_ray.core.evaluate")
plots = lazy_module("fer_ray.core.plots")
saliency_maps = lazy_module("fer_ray.core.saliency_maps")
saliency_plots = lazy_module("fer_ray.core.saliency_plots")
stats = lazy_module("fer_ray.core.stats")


class Settings(Strict):
    """The ``settings:`` section of a saliency sweep."""

    images: list[str] = Field([], description="file name stems (e.g. AF01HAS), case-insensitive; any split")
    per_class: int | None = Field(None, ge=1, description="first N test images of each class (neither given: 1)")
    target: Literal["true_class", "predicted_class"] = Field("true_class", description="class whose score is explained")
    gradcam_layer: str = Field("layer4", description="Grad-CAM layer, a module name of the model or its backbone")
    center_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="side of the central box / image side")

    @model_validator(mode="after")
    def _one_way_of_choosing(self) -> Settings:
        if self.images and self.per_class is not None:
            raise ValueError(
                f"give settings.images ({self.images}) or settings.per_class ({self.per_class}), not both; "
                "to pick images by name from a sweep file that sets per_class, add settings.per_class=null"
            )
        return self


#: the maps whose central mass is reported, in report order
MAP_NAMES = ("vanilla", "guided", "gradcam")
#: names the maps whose central mass is not reported, and why (e.g. Grad-CAM at 2x2), or "none"
TAG_CENTER_MASS_WITHHELD = "fer_ray.center_mass_withheld"


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Saliency PNGs of the chosen images; returns the central-mass summary (see module docstring)."""
    cfg: Settings = trial.settings
    model, data = load_model_and_data(trial)
    rows = select_by_name(data, cfg.images) if cfg.images else select_per_class(data, cfg.per_class or 1)
    images = cache.load_image_tensors(data.dataset, trial.data.image_size, trial.data.cache_dir)[torch.from_numpy(rows)]
    labels = torch.from_numpy(data.dataset.labels[rows])
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            "fer_ray.saliency_target": cfg.target,
            "fer_ray.saliency_images": " ".join(data.dataset.images[int(r)].path.stem for r in rows)[:5000],
        }
    )

    probs = evaluate.predict_proba(model, images)
    predicted = probs.argmax(dim=1)
    target = labels if cfg.target == "true_class" else predicted
    guided = saliency_maps.guided_backprop(model, images, target)
    cams, cam_size = saliency_maps.grad_cam_with_resolution(model, images, target, cfg.gradcam_layer)
    maps = {"vanilla": saliency_maps.vanilla_saliency(model, images, target), "guided": guided.abs().sum(dim=1), "gradcam": cams}
    panels = saliency_maps.saliency_panels(guided)
    verdicts = plots.prediction_labels(data.dataset.classes, labels, predicted)
    for i, row in enumerate(rows):
        figure = saliency_plots.saliency_row_figure(
            evaluate.as_float_images(images[i]),
            {
                "vanilla": maps["vanilla"][i],
                "guided grayscale": panels["grayscale"][i],
                "guided colour": panels["colour"][i],
                "guided positive": panels["positive"][i],
                "guided negative": panels["negative"][i],
                "Grad-CAM": maps["gradcam"][i],
            },
            title=_title(data, int(row), int(predicted[i]), float(probs[i, predicted[i]]), cfg.target),
            overlay=("Grad-CAM",),
            prediction=verdicts[i],
        )
        reporter.figure(figure, f"saliency_{_file_key(data, rows, i)}.png")

    metrics = {"n_images": float(len(rows)), "selected_acc": float((predicted == labels).float().mean())}
    metrics["center_area"] = float(saliency_maps.center_mass_fraction(torch.ones_like(maps["vanilla"][:1]), cfg.center_fraction)[0])
    withheld = {}
    for name in MAP_NAMES:
        summary = saliency_maps.center_mass_summary(maps[name], cfg.center_fraction, cam_size if name == "gradcam" else None)
        metrics[f"zero_maps_{name}"] = float(summary["n_zero_maps"])
        if np.isfinite(summary["center_mass"]):
            metrics[f"center_mass_{name}"] = summary["center_mass"]
        else:
            withheld[name] = summary["reason"]
    reporter.tags({TAG_CENTER_MASS_WITHHELD: "; ".join(f"{name}: {why}" for name, why in withheld.items()) or "none"})
    return metrics


# ----------------------------------------------------------------------------------------------
# Choosing images
# ----------------------------------------------------------------------------------------------


def select_by_name(data: PreparedData, names: list[str]) -> np.ndarray:
    """Dataset rows (int64, in ``names`` order) of the files whose stem (or full name) matches each
    name, case-insensitive. Raises DataError listing every unknown name, or a name matching several
    files."""
    index: dict[str, list[int]] = {}
    for row, image in enumerate(data.dataset.images):
        for key in {image.path.stem.casefold(), image.path.name.casefold()}:
            index.setdefault(key, []).append(row)
    unknown = [name for name in names if name.casefold() not in index]
    if unknown:
        example = ", ".join(image.path.stem for image in data.dataset.images[:3])
        raise DataError(
            f"settings.images: no image file named {unknown} in the {data.dataset.name} dataset "
            f"({len(data.dataset)} images; names look like {example})"
        )
    ambiguous = {name: index[name.casefold()] for name in names if len(index[name.casefold()]) > 1}
    if ambiguous:
        name, rows = next(iter(ambiguous.items()))
        paths = [str(data.dataset.images[r].path) for r in rows[:4]]
        raise DataError(f"settings.images: {name!r} matches {len(rows)} files ({paths}); give a unique name")
    return np.array([index[name.casefold()][0] for name in names], dtype=np.int64)


def select_per_class(data: PreparedData, per_class: int) -> np.ndarray:
    """The first ``per_class`` test images of each class (test split order = dataset order), class by
    class: dataset rows, int64. A class with fewer test images gives what it has."""
    test_rows, test_labels = data.test.indices, data.test.labels.numpy()
    chosen = [test_rows[test_labels == label][:per_class] for label in range(len(data.dataset.classes))]
    rows = np.concatenate(chosen).astype(np.int64)
    if rows.size == 0:
        raise DataError(f"the test split of {data.dataset.name} is empty: no image to explain")
    return rows


# ----------------------------------------------------------------------------------------------


def _split_of(data: PreparedData, row: int) -> str:
    for name in ("test", "val", "train"):
        if row in getattr(data.split, name):
            return name
    return "unused"


def _title(data: PreparedData, row: int, predicted: int, probability: float, target: str) -> str:
    """The figure's title; the image's own title says true / predicted class (prediction_labels)."""
    classes = data.dataset.classes
    return (
        f"{data.dataset.images[row].path.name} ({_split_of(data, row)} split) | "
        f"p({classes[predicted]})={probability:.2f} | maps for the {target.replace('_', ' ')}"
    )


def _file_key(data: PreparedData, rows: np.ndarray, i: int) -> str:
    """The PNG name part of image i: its file stem, plus its position when stems repeat."""
    stems = [data.dataset.images[int(r)].path.stem for r in rows]
    return stems[i] if stems.count(stems[i]) == 1 else f"{stems[i]}_{i}"


# ----------------------------------------------------------------------------------------------
# Sweep report
# ----------------------------------------------------------------------------------------------


def _cell(column: str, value: float) -> str:
    return f"{value:.0f}" if column.startswith(("n_", "zero_")) else f"{value:.3f}"


def report(table: TrialTable) -> Report:
    """The central-mass summary per model and its mean over models."""
    table = table.finished()
    cfg: Settings = table.settings
    runs = table.frame()
    columns = [
        "n_images",
        "selected_acc",
        "center_area",
        *[f"center_mass_{name}" for name in MAP_NAMES],
        *[f"zero_maps_{name}" for name in MAP_NAMES],
    ]
    columns = [c for c in columns if c in runs]
    lines = [
        "## Saliency",
        "",
        f"Maps for the {cfg.target.replace('_', ' ')} of each chosen image: vanilla gradients, guided backpropagation "
        f"(|gradient| summed over colour channels) and Grad-CAM at {cfg.gradcam_layer}; one PNG per image in "
        "each run's artifacts (saliency_<file>.png). center_mass_<map>: share of the map's mass in the central "
        f"box ({cfg.center_fraction:g} of each side), over the maps with any mass; zero_maps_<map>: all-zero maps "
        "(counted, not averaged); center_area: that box's share of the pixels, what a map spread evenly would give. "
        "selected_acc: the chosen images predicted right. Interval: 95 % over models (training seeds), the same images, "
        "Student t clipped to [0, 1].",
        "",
        *_withheld_lines(table),
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    has_sources = runs["source_model"].notna().any()
    if has_sources:
        runs = runs.sort_values("source_model", kind="stable")
    labels = [model_label(seed, number) for number, seed in enumerate(runs["train_seed"], start=1)]
    for label, (_, run) in zip(labels, runs.iterrows()):
        lines.append(f"| {label} | " + " | ".join(_cell(c, float(run[c])) for c in columns) + " |")
    if len(runs) > 1:
        cells = []
        for column in columns:
            bounds = None if column.startswith(("n_", "zero_")) else stats.ACCURACY_BOUNDS
            cells.append(summary_cell(stats.mean_ci(runs[column].astype(float), bounds=bounds)))
        lines.append("| mean [95 % CI over models] | " + " | ".join(cells) + " |")
    if has_sources:
        lines += ["", *[f"- {label}: {source}" for label, source in zip(labels, runs["source_model"])]]
    return Report("\n".join(lines) + "\n", metrics=parent_metrics(runs, columns, labels))


def parent_metrics(runs, columns: list[str], labels: list[str]) -> dict[str, float]:
    """The parent run's headline numbers: ``mean_<column>`` over models (one trial per model) for
    center_mass_<map>, selected_acc and zero_maps_<map>, with ``/ci_low`` and ``/ci_high`` (95 % over
    models; fractions within [0, 1]) from two models on; ``center_area`` (the central box's share of
    the pixels, the same for every model: what an evenly spread map gives); and each model's
    ``center_mass_<map>/<model>`` (``train_seed_0``, or ``model_1`` where the seed is unknown).
    labels: the models' names in ``runs`` order."""
    metrics: dict[str, float] = {}
    for column in columns:
        if column == "n_images":
            continue
        if column == "center_area":
            metrics[column] = float(runs[column].iloc[0])
            continue
        bounds = None if column.startswith("zero_") else stats.ACCURACY_BOUNDS
        metrics.update(stats.mean_ci_metrics(f"mean_{column}", runs[column].astype(float), bounds))
        if column.startswith("center_mass_") and len(set(labels)) == len(labels):  # one trial per model
            for label, value in zip(labels, runs[column].astype(float)):
                if np.isfinite(value):
                    metrics[f"{column}/{label.replace(' ', '_')}"] = float(value)
    return metrics


def _withheld_lines(table: TrialTable) -> list[str]:
    """One line per distinct reason a map kind's central mass was not reported."""
    reasons = sorted({r.tags.get(TAG_CENTER_MASS_WITHHELD, "none") for r in table} - {"none"})
    return [f"Central mass not reported: {reason}." for reason in reasons] + ([""] if reasons else [])


EXPERIMENT = Experiment(
    name="saliency",
    settings=Settings,
    evaluates_model=True,
    run=run,
    report=report,
    summary_metrics=("center_mass_*", "selected_acc"),
)
