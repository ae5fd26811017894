"""Matplotlib figure builders. Each returns a ``matplotlib.figure.Figure`` and never shows it.

Figures are made with ``Figure()`` rather than pyplot, so nothing is registered in pyplot's global
figure list (no leak over a long sweep) and they render with the Agg canvas on savefig whatever the
interactive backend; callers save them (``fig.savefig(path)``) or log them to MLflow.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def augmentation_grid(images, augmented, titles: list[str] | None = None) -> Figure:
    """A grid with one row per image: the original, then its augmented variants.

    images: (N, 3, H, W), uint8 0..255 or float [0,1]. augmented: a list of K tensors shaped like
    ``images`` (variant k of every image) or one tensor (N, K, 3, H, W). titles: K + 1 column titles
    (default "original", "augmented 1", ...). Returns a Figure with N x (K + 1) axes.
    """
    originals = as_cpu_float_images(images)
    if isinstance(augmented, torch.Tensor):
        variants = as_cpu_float_images(augmented.flatten(0, 1)).view(augmented.shape)
    else:
        variants = torch.stack([as_cpu_float_images(v) for v in augmented], dim=1)
    if variants.shape[0] != originals.shape[0] or variants.shape[2:] != originals.shape[1:]:
        raise ValueError(
            f"augmented variants of shape {tuple(variants.shape)} do not match images {tuple(originals.shape)} "
            "(expected (N, K, 3, H, W) or a list of K tensors shaped (N, 3, H, W))"
        )
    rows, columns = originals.shape[0], variants.shape[1] + 1
    titles = titles or ["original"] + [f"augmented {k}" for k in range(1, columns)]
    if len(titles) != columns:
        raise ValueError(f"augmentation_grid got {len(titles)} titles for {columns} columns")

    figure = Figure(figsize=(1.6 * columns, 1.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        pictures = [originals[row]] + list(variants[row])
        for column, picture in enumerate(pictures):
            axis = axes[row, column]
            axis.imshow(picture.permute(1, 2, 0).numpy())
            axis.set_axis_off()
            if row == 0:
                axis.set_title(titles[column], fontsize=9)
    return figure


def confusion_matrix_figure(confusion, classes, normalize: bool = True, title: str = "Confusion matrix") -> Figure:
    """The confusion matrix (rows = true class, columns = predicted) with every cell annotated.

    confusion: C x C counts (list of lists or array). normalize: divide each row by its total
    (a row without images stays 0), cells show 2 decimals; otherwise raw counts.
    Returns a Figure with the matrix axes and its colorbar.
    """
    matrix = np.asarray(confusion, dtype=float if normalize else np.int64)
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {len(classes)} classes")
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    figure = Figure(figsize=(1.0 + 0.9 * len(classes), 0.6 + 0.8 * len(classes)), layout="constrained")
    axis = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(
        ax=axis, cmap="Blues", values_format=".2f" if normalize else "d", xticks_rotation=45, colorbar=True
    )
    axis.set_title(title)
    return figure


def as_cpu_float_images(images) -> torch.Tensor:
    """uint8 0..255 or float [0,1] tensor / array -> float32 CPU tensor in [0,1]."""
    tensor = torch.as_tensor(images).detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float().clamp(0.0, 1.0)


#: Colours of a prediction's label on image panels: right, wrong.
RIGHT_COLOUR, WRONG_COLOUR = "tab:green", "tab:red"


def prediction_labels(classes, true, predicted) -> list[tuple[str, str]]:
    """One (text, colour) per image for image panels: ``"true happy / pred sad"``, green where the
    prediction is right, red where wrong. true, predicted: (N,) class indices into ``classes``."""
    true, predicted = np.asarray(true, dtype=np.int64).ravel(), np.asarray(predicted, dtype=np.int64).ravel()
    if true.shape != predicted.shape:
        raise ValueError(f"true ({true.size}) and predicted ({predicted.size}) need one class per image")
    return [
        (f"true {classes[t]} / pred {classes[q]}", RIGHT_COLOUR if t == q else WRONG_COLOUR)
        for t, q in zip(true.tolist(), predicted.tolist())
    ]


def metric_curve_figure(
    x,
    mean,
    low,
    high,
    xlabel: str,
    ylabel: str,
    title: str,
    point_labels: list[str] | None = None,
    chance: float | None = None,
    mean_label: str = "mean over seeds",
) -> Figure:
    """A metric against a swept value with its confidence band (the reference study's accuracy-vs-size graphs).

    x, mean, low, high: 1-D sequences of equal length (low/high may be NaN where one seed gives no
    interval; the band is then left out at that point). point_labels annotate the points (e.g. arch).
    chance: the accuracy of guessing (1 / number of classes), drawn as a dashed line so a reader sees
    which points are above it; None: no line. mean_label: the legend's name of the points.
    """
    x, mean, low, high = (np.asarray(v, dtype=float) for v in (x, mean, low, high))
    order = np.argsort(x)
    x, mean, low, high = x[order], mean[order], low[order], high[order]
    figure = Figure(figsize=(5.5, 3.8))
    axis = figure.add_subplot()
    axis.plot(x, mean, marker="o", color="tab:blue", label=mean_label)
    has_band = np.isfinite(low) & np.isfinite(high)
    if has_band.any():
        axis.fill_between(x[has_band], low[has_band], high[has_band], color="tab:blue", alpha=0.2, label="95 % CI")
    if chance is not None:
        axis.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
    if point_labels is not None:
        for xi, yi, text in zip(x, mean, np.asarray(point_labels, dtype=object)[order]):
            axis.annotate(str(text), (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=8)
        axis.margins(x=0.12)  # room for the rightmost point's label inside the axes
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure
