"""Figure builders of the t-SNE experiment: one embedding's scatter plot, several side by side.

Like fer_ray.core.plots, every builder returns a ``matplotlib.figure.Figure`` made without pyplot
(nothing registered globally, Agg rendering on savefig) and never shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

#: Marker per group (gender, angle, ...), in sorted group order; cycles past the tenth group.
GROUP_MARKERS: tuple[str, ...] = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")
#: Colour map of the expression classes (10 distinct colours; KDEF has 7 classes).
CLASS_COLOURS = "tab10"


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
        axis.scatter(
            *coords[members].T,
            c=[palette[i] for i in labels[members]],
            marker=GROUP_MARKERS[g % len(GROUP_MARKERS)],
            s=18,
            alpha=0.8,
            linewidths=0,
        )
    class_handles = [Line2D([], [], ls="", marker="o", color=palette[i], label=classes[i]) for i in sorted(set(labels.tolist()))]
    group_handles = (
        []
        if groups is None
        else [
            Line2D([], [], ls="", marker=GROUP_MARKERS[g % len(GROUP_MARKERS)], color="0.3", label=name)
            for g, name in enumerate(group_names)
        ]
    )
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


def embedding_grid_figure(
    panels: Sequence[Mapping], classes: Sequence[str], group_name: str | None = None, columns: int | None = None
) -> Figure:
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
        for handles, found in zip(
            (class_handles, group_handles), draw_embedding(axis, coords, panel["labels"], classes, panel.get("groups"))
        ):
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
