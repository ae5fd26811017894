"""Figures of the robustness experiments: noisy / adversarial example panels, accuracy curves against
noise variance or epsilon, and the box plot of accuracy over noise repeats.

Units: images are (N, 3, H, W), uint8 0..255 or float [0,1]; variance, sigma and epsilon are in that
[0,1] pixel space. Like fer_ray.core.plots, every builder returns a ``matplotlib.figure.Figure``
made without pyplot (nothing registered globally) and never shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from fer_ray.core.plots import as_cpu_float_images

#: Colour of the reference study's numbers on every figure.
REFERENCE_COLOUR = "tab:gray"


def image_panel_figure(
    columns: Mapping[str, torch.Tensor],
    captions: Mapping[str, Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    predictions: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> Figure:
    """A grid of images: one column per entry of ``columns`` (its key is the column title), one row per image.

    columns: {title: images (k, 3, H, W) uint8 or float [0,1]}, every entry with the same k.
    predictions: {title: k (text, colour)} written above each image of that column in its colour
    (fer_ray.core.plots.prediction_labels: "true happy / pred sad", green right, red wrong).
    captions: {title: k strings} written under the images of that column (e.g. top-3 classes).
    row_labels: k strings written left of each row (e.g. the true class where nothing predicts).
    """
    titles = list(columns)
    if not titles:
        raise ValueError("image_panel_figure needs at least one column of images")
    pictures = {name: as_cpu_float_images(images) for name, images in columns.items()}
    counts = {name: int(images.shape[0]) for name, images in pictures.items()}
    for name, texts in {**(captions or {}), **(predictions or {})}.items():
        if len(texts) != counts.get(name, len(texts)):
            raise ValueError(f"column {name!r} has {counts[name]} images but {len(texts)} captions or predictions")
    if len(set(counts.values())) != 1:
        raise ValueError(f"every column needs the same number of images, got {counts}")
    rows = counts[titles[0]]
    if rows == 0:
        raise ValueError("image_panel_figure got columns without images")
    captions, predictions = captions or {}, predictions or {}
    caption_lines = max((len(str(text).splitlines()) for texts in captions.values() for text in texts), default=0)
    row_height = 2.0 + 0.17 * caption_lines + 0.2 * bool(predictions)
    figure = Figure(figsize=(2.0 * len(titles) + 0.4, row_height * rows + 0.6), layout="constrained")
    # one subfigure per column: its name heads the column, so every image keeps its own title line
    for column, (name, panel) in enumerate(zip(titles, figure.subfigures(1, len(titles), squeeze=False)[0])):
        panel.suptitle(name, fontsize=9)
        for row, axis in enumerate(panel.subplots(rows, 1, squeeze=False)[:, 0]):
            axis.imshow(pictures[name][row].permute(1, 2, 0).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if name in predictions:
                text, colour = predictions[name][row]
                axis.set_title(text, fontsize=7, color=colour)
            if name in captions:
                axis.set_xlabel(str(captions[name][row]), fontsize=7, loc="left")
            if column == 0 and row_labels is not None:
                axis.set_ylabel(str(row_labels[row]), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def top_k_caption(classes: Sequence[str], top_classes, top_probs) -> str:
    """'happy 0.81\\nsad 0.12\\n...' from one image's top-k class indices and probabilities."""
    return "\n".join(f"{classes[int(c)]} {float(p):.2f}" for c, p in zip(top_classes, top_probs))


def accuracy_curve_figure(
    x,
    mean,
    low,
    high,
    xlabel: str,
    title: str,
    reference: Mapping[float, float] | None = None,
    reference_label: str = "reference study",
    band_label: str = "95 % CI over models",
    line_label: str = "this study (mean over models)",
    log_x: bool = True,
) -> Figure:
    """Accuracy against noise variance or epsilon, with its confidence band and reference points.

    x, mean, low, high: 1-D of equal length (low/high NaN where there is no interval, e.g. one model:
    the band is left out there). line_label names the measured line. reference: {x: accuracy} drawn
    as grey markers (e.g. the reference study's numbers). log_x: symmetric-log x axis (linear below 1e-3), so
    0 and 0.001..0.3 all show.
    """
    x, mean, low, high = (np.asarray(v, dtype=float) for v in (x, mean, low, high))
    if not (x.shape == mean.shape == low.shape == high.shape) or x.ndim != 1:
        raise ValueError(f"x, mean, low, high must be 1-D of one length, got {x.shape}, {mean.shape}, {low.shape}, {high.shape}")
    order = np.argsort(x)
    x, mean, low, high = x[order], mean[order], low[order], high[order]
    figure = Figure(figsize=(6.0, 3.9), layout="constrained")
    axis = figure.add_subplot()
    axis.plot(x, mean, marker="o", color="tab:blue", label=line_label)
    has_band = np.isfinite(low) & np.isfinite(high)
    if has_band.any():
        axis.fill_between(x[has_band], low[has_band], high[has_band], color="tab:blue", alpha=0.2, label=band_label)
    if reference:
        ref_x = np.array(sorted(reference), dtype=float)
        axis.plot(
            ref_x, [reference[v] for v in sorted(reference)], marker="s", linestyle="--", color=REFERENCE_COLOUR, label=reference_label
        )
    if log_x:
        axis.set_xscale("symlog", linthresh=1e-3)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("test accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper right", fontsize=8)
    return figure


def repeats_boxplot_figure(
    values: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str,
    reference: Mapping[str, float] | None = None,
    reference_label: str = "reference study",
    xlabel: str = "model (training source)",
) -> Figure:
    """A box plot of a metric over repeats, one box per entry (e.g. per model), every repeat as a dot.

    values: {box label: the repeats' values}; name boxes by where the model came from (e.g. "train
    seed 0"), not by position. reference: optional {"median", "min", "max"}. The y-axis spans the
    data (plus a margin), never stretched to the reference: reference values inside that span are
    grey horizontal lines (solid median, dashed min / max); values outside are written at the top or
    bottom edge with an arrow pointing their way, so a far-off reference cannot squash the boxes.
    """
    labels = list(values)
    if not labels or any(len(values[label]) == 0 for label in labels):
        raise ValueError(
            f"repeats_boxplot_figure needs at least one value per box, got {{{', '.join(f'{k}: {len(v)}' for k, v in values.items())}}}"
        )
    data = [np.asarray(values[label], dtype=float) for label in labels]
    figure = Figure(figsize=(max(4.0, 1.4 * len(labels) + 2.5), 4.0), layout="constrained")
    axis = figure.add_subplot()
    axis.boxplot(data, tick_labels=labels, showmeans=True, meanprops={"marker": "^", "markerfacecolor": "white"})
    jitter = np.random.default_rng(0)  # fixed jitter: the figure is the same on every run
    for position, points in enumerate(data, start=1):
        axis.scatter(position + jitter.uniform(-0.08, 0.08, len(points)), points, s=14, color="tab:blue", alpha=0.7, zorder=3)
    everything = np.concatenate(data)
    low, high = float(np.nanmin(everything)), float(np.nanmax(everything))
    margin = max(0.15 * (high - low), 0.01)
    limits = (low - margin, high + margin)
    axis.set_ylim(*limits)
    if reference:
        _draw_reference(axis, reference, reference_label, limits)
        # room for the edge note (three short lines) so it never covers the data
        note = 0.45 * (high - low + 2 * margin)
        axis.set_ylim(
            limits[0] - note * any(v < limits[0] for v in reference.values()),
            limits[1] + note * any(v > limits[1] for v in reference.values()),
        )
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="y")
    return figure


def _draw_reference(axis, reference: Mapping[str, float], label: str, limits: tuple[float, float]) -> None:
    """Lines for the reference values inside ``limits``; an edge note with an arrow for those outside."""
    inside = {key: value for key, value in reference.items() if limits[0] <= value <= limits[1]}
    for key, value in inside.items():
        axis.axhline(
            value,
            color=REFERENCE_COLOUR,
            linewidth=1.2 if key == "median" else 0.9,
            linestyle="-" if key == "median" else "--",
            label=f"{label}: {key} {value:.2f}",
        )
    if inside:
        axis.legend(loc="best", fontsize=8)
    for side, arrow, y, keys in (
        ("above", "\u2191", 0.97, [k for k, v in reference.items() if v > limits[1]]),
        ("below", "\u2193", 0.03, [k for k, v in reference.items() if v < limits[0]]),
    ):
        if keys:
            # one short line each: a box plot of one or two models is narrow
            text = f"{arrow} {label}\n({side} this range):\n" + ", ".join(f"{k} {reference[k]:.2f}" for k in keys)
            axis.text(
                0.02,
                y,
                text,
                transform=axis.transAxes,
                ha="left",
                va="top" if side == "above" else "bottom",
                fontsize=8,
                color=REFERENCE_COLOUR,
            )
