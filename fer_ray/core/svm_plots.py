"""Figures of the SVM baseline: the cross-validation accuracy heatmap and the CNN-vs-SVM bar chart.

Each builder returns a ``matplotlib.figure.Figure`` made without pyplot (nothing registered
globally, Agg rendering on savefig), as fer_ray.core.plots does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def cv_heatmap_figure(
    cv_acc: Mapping[tuple, float],
    C_values: Sequence[float],
    gamma_values: Sequence,
    kernels: Sequence[str],
    best: tuple | None = None,
    title: str = "SVM: mean cross-validation accuracy",
) -> Figure:
    """One panel per kernel: mean CV accuracy over C (rows) x gamma (columns), every cell annotated.

    cv_acc: {(C, gamma, kernel): accuracy in [0,1]}; missing or NaN points are left blank. The
    axes follow the order of C_values / gamma_values / kernels (the sweep's grid order). best: the
    chosen (C, gamma, kernel), outlined in red. One shared colour scale over all panels.
    """
    if not kernels or not C_values or not gamma_values:
        raise ValueError(
            f"cv_heatmap_figure needs at least one C, gamma and kernel (got {list(C_values)}, {list(gamma_values)}, {list(kernels)})"
        )
    grids = {
        kernel: np.array([[cv_acc.get((c, g, kernel), np.nan) for g in gamma_values] for c in C_values], dtype=float) for kernel in kernels
    }
    finite = np.concatenate([grid[np.isfinite(grid)] for grid in grids.values()])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:  # a flat grid still needs a colour range
        low, high = low - 0.01, high + 0.01

    width = 1.2 + len(kernels) * (1.0 + 0.75 * len(gamma_values))
    figure = Figure(figsize=(width, 1.3 + 0.45 * len(C_values)), layout="constrained")
    axes = figure.subplots(1, len(kernels), squeeze=False)[0]
    image = None
    for axis, kernel in zip(axes, kernels):
        grid = grids[kernel]
        image = axis.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=low, vmax=high, aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            if np.isfinite(value):
                shade = "black" if value > (low + high) / 2 else "white"
                axis.text(column, row, f"{value:.3f}", ha="center", va="center", fontsize=7, color=shade)
        if best is not None and best[2] == kernel:
            row, column = list(C_values).index(best[0]), list(gamma_values).index(best[1])
            axis.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.0))
        axis.set_xticks(range(len(gamma_values)), [str(g) for g in gamma_values], fontsize=8)
        axis.set_yticks(range(len(C_values)), [f"{c:g}" for c in C_values], fontsize=8)
        axis.set_xlabel("gamma")
        axis.set_ylabel("C")
        axis.set_title(f"kernel = {kernel}", fontsize=10)
    figure.colorbar(image, ax=list(axes), label="mean CV accuracy", shrink=0.9)
    figure.suptitle(title, fontsize=11)
    return figure


def baseline_bars_figure(accuracies: Mapping[str, float], title: str = "Test accuracy: fine-tuned CNN vs SVM") -> Figure:
    """One bar per model (in the mapping's order) with its test accuracy written above it.

    accuracies: {label: accuracy in [0,1]}, e.g. {"fine-tuned CNN": 0.95, "tuned SVM": 0.72,
    "untuned SVM": 0.6}. The y axis runs from 0 to 1.
    """
    if not accuracies:
        raise ValueError("baseline_bars_figure needs at least one accuracy")
    labels, values = list(accuracies), [float(v) for v in accuracies.values()]
    figure = Figure(figsize=(1.2 + 1.3 * len(labels), 3.6), layout="constrained")
    axis = figure.add_subplot()
    colours = ["tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:red"]
    bars = axis.bar(range(len(labels)), values, color=[colours[i % len(colours)] for i in range(len(labels))])
    axis.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=9)
    axis.set_xticks(range(len(labels)), labels, fontsize=9)
    axis.set_ylim(0.0, 1.05)
    axis.set_ylabel("test accuracy")
    axis.set_title(title, fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    return figure
