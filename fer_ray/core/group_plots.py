"""Figure builder of the demographic-bias experiment: accuracy per group with 95 % intervals.

Like fer_ray.core.plots, every builder returns a ``matplotlib.figure.Figure`` made without pyplot
(nothing registered globally, Agg rendering on savefig) and never shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


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
