"""Figure builders of the insight experiments: t-SNE scatter plots, saliency rows, group accuracy bars.

Like fer_ray.core.plots, every builder returns a ``matplotlib.figure.Figure`` made without pyplot
(nothing registered globally, Agg rendering on savefig) and never shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

#: Marker per group (gender, angle, ...), in sorted group order; cycles past the tenth group.
GROUP_MARKERS: tuple[str, ...] = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")
#: Colour map of the expression classes (10 distinct colours; KDEF has 7 classes).
CLASS_COLOURS = "tab10"


# ----------------------------------------------------------------------------------------------
# t-SNE
# ----------------------------------------------------------------------------------------------


def draw_embedding(axis, coords, labels, classes: Sequence[str], groups=None) -> tuple[list, list]:
    """Scatter ``coords`` (N, 2) or (N, 3) on ``axis`` (a 3-D axis for 3 columns): colour = class of
    ``labels`` (N,) int indices into ``classes``, marker = value of ``groups`` (N,) (None: one marker).
    Returns the legend handles (one per class present, one per group; [] without groups)."""
    coords, labels = np.asarray(coords, dtype=float), np.asarray(labels, dtype=np.int64)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3) or len(coords) != len(labels):
        raise ValueError(f"coords must be (N, 2) or (N, 3) with N = len(labels) = {len(labels)}, got {coords.shape}")
    group_values = np.full(len(coords), "all", dtype=object) if groups is None else np.asarray([str(g) for g in groups], dtype=object)
    group_names = sorted(set(group_values.tolist()))
    palette = _class_palette(len(classes))
    for g, group in enumerate(group_names):
        members = group_values == group
        axis.scatter(*coords[members].T, c=[palette[i] for i in labels[members]], marker=GROUP_MARKERS[g % len(GROUP_MARKERS)], s=18, alpha=0.8, linewidths=0)
    class_handles = [Line2D([], [], ls="", marker="o", color=palette[i], label=classes[i]) for i in sorted(set(labels.tolist()))]
    group_handles = [] if groups is None else [
        Line2D([], [], ls="", marker=GROUP_MARKERS[g % len(GROUP_MARKERS)], color="0.3", label=name) for g, name in enumerate(group_names)
    ]
    return class_handles, group_handles


def embedding_figure(coords, labels, classes: Sequence[str], groups=None, group_name: str | None = None, title: str = "") -> Figure:
    """One t-SNE scatter plot (2-D or 3-D by the columns of ``coords``); see draw_embedding.
    group_name titles the marker legend (e.g. "gender")."""
    coords = np.asarray(coords, dtype=float)
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axis = figure.add_subplot(projection="3d" if coords.shape[1] == 3 else None)
    _add_legends(figure, *draw_embedding(axis, coords, labels, classes, groups), group_name)
    axis.set_title(title, fontsize=9)
    return figure


def embedding_grid_figure(panels: Sequence[Mapping], classes: Sequence[str], group_name: str | None = None, columns: int | None = None) -> Figure:
    """Several embeddings side by side (e.g. one per perplexity), with one legend for all.

    panels: mappings with "coords" (N, 2|3), "labels" (N,), optional "groups" (N,) and "title".
    columns: panels per row (default: all in one row).
    """
    if not panels:
        raise ValueError("embedding_grid_figure needs at least one panel")
    columns = columns or len(panels)
    rows = int(np.ceil(len(panels) / columns))
    figure = Figure(figsize=(3.6 * columns + 1.6, 3.4 * rows), layout="constrained")
    class_handles, group_handles = {}, {}
    for index, panel in enumerate(panels):
        coords = np.asarray(panel["coords"], dtype=float)
        axis = figure.add_subplot(rows, columns, index + 1, projection="3d" if coords.shape[1] == 3 else None)
        for handles, found in zip((class_handles, group_handles), draw_embedding(axis, coords, panel["labels"], classes, panel.get("groups"))):
            handles.update({handle.get_label(): handle for handle in found})
        axis.set_title(panel.get("title", ""), fontsize=9)
    _add_legends(figure, list(class_handles.values()), list(group_handles.values()), group_name)
    return figure


def _add_legends(figure: Figure, class_handles: list, group_handles: list, group_name: str | None) -> None:
    """The expression (colour) legend top right and the group (marker) legend below it, outside the axes."""
    figure.legend(handles=class_handles, title="expression", fontsize=7, title_fontsize=8, loc="outside right upper")
    if group_handles:
        figure.legend(handles=group_handles, title=group_name, fontsize=7, title_fontsize=8, loc="outside right lower")


def _class_palette(n_classes: int) -> list[tuple[float, ...]]:
    """One RGBA colour per class index."""
    cmap = colormaps[CLASS_COLOURS]
    return [cmap(i % cmap.N) for i in range(n_classes)]


# ----------------------------------------------------------------------------------------------
# Saliency
# ----------------------------------------------------------------------------------------------


def saliency_row_figure(image, maps: Mapping[str, torch.Tensor], title: str, overlay: Sequence[str] = ()) -> Figure:
    """The image and its saliency panels in one row.

    image: (3, H, W) float [0,1] or uint8. maps: panel title -> (H, W) map in [0,1] (drawn in gray,
    or as a 'jet' heat map over the grayscale image for titles in ``overlay``) or (3, H, W) RGB in
    [0,1]. Returns a Figure with 1 + len(maps) axes.
    """
    picture = torch.as_tensor(image).detach().cpu()
    picture = picture.float() / 255.0 if picture.dtype == torch.uint8 else picture.float().clamp(0, 1)
    if picture.ndim != 3 or picture.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(picture.shape)}")
    figure = Figure(figsize=(1.9 * (len(maps) + 1), 2.4), layout="constrained")
    axes = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(picture.permute(1, 2, 0).numpy())
    axes[0].set_title("image", fontsize=8)
    gray = picture.mean(dim=0).numpy()
    for axis, (name, saliency) in zip(axes[1:], maps.items()):
        values = torch.as_tensor(saliency).detach().cpu().float()
        if values.ndim == 3:
            axis.imshow(values.permute(1, 2, 0).clamp(0, 1).numpy())
        elif name in overlay:
            axis.imshow(gray, cmap="gray", vmin=0, vmax=1)
            axis.imshow(values.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        else:
            axis.imshow(values.numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(name, fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=9)
    return figure


# ----------------------------------------------------------------------------------------------
# Demographic groups
# ----------------------------------------------------------------------------------------------


def group_accuracy_figure(attributes: Mapping[str, Sequence[Mapping]], title: str = "Accuracy per group") -> Figure:
    """Bar chart of accuracy per group with 95 % intervals, one panel per attribute.

    attributes: attribute name -> rows with "group", "acc", "low", "high" (NaN bounds: no error bar)
    and optionally "n" (images, shown under the group name).
    """
    if not attributes:
        raise ValueError("group_accuracy_figure needs at least one attribute")
    figure = Figure(figsize=(2.2 + 1.3 * sum(len(rows) for rows in attributes.values()), 3.6), layout="constrained")
    widths = [max(len(rows), 1) for rows in attributes.values()]
    axes = figure.subplots(1, len(attributes), squeeze=False, sharey=True, gridspec_kw={"width_ratios": widths})[0]
    for axis, (attribute, rows) in zip(axes, attributes.items()):
        acc = np.array([row["acc"] for row in rows], dtype=float)
        low = np.array([row["low"] for row in rows], dtype=float)
        high = np.array([row["high"] for row in rows], dtype=float)
        # clipped at 0: a percentile interval need not contain its point estimate
        errors = np.vstack([np.where(np.isfinite(low), acc - low, 0.0), np.where(np.isfinite(high), high - acc, 0.0)]).clip(min=0.0)
        names = [f"{row['group']}\n(n={int(row['n'])})" if "n" in row else str(row["group"]) for row in rows]
        axis.bar(names, acc, yerr=errors, capsize=4, color="tab:blue", alpha=0.75)
        axis.set_title(attribute, fontsize=9)
        axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (95 % CI)")
    figure.suptitle(title, fontsize=10)
    return figure
