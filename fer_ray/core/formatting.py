"""How numbers with an interval appear in report tables: ``0.850 [0.800–0.900]``.

One formatter for every report, so the cells read the same across experiments. An interval with a
missing bound (NaN: one seed, one model) prints as ``-``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def interval_text(low: float, high: float, digits: int = 3) -> str:
    """``low–high`` with ``digits`` decimals (an en dash between), or ``-`` when a bound is NaN/None."""
    if low is None or high is None or math.isnan(float(low)) or math.isnan(float(high)):
        return "-"
    return f"{float(low):.{digits}f}–{float(high):.{digits}f}"


def mean_interval_cell(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``mean [low–high]``: a table cell of an estimate and its interval (``mean [-]`` without one)."""
    return f"{float(mean):.{digits}f} [{interval_text(low, high, digits)}]"


def summary_cell(summary: Mapping[str, float], digits: int = 3) -> str:
    """mean_interval_cell of a ``{"mean", "low", "high"}`` mapping (what stats.mean_ci returns)."""
    return mean_interval_cell(summary["mean"], summary["low"], summary["high"], digits)


def epochs_text(epochs: int, images_per_epoch: int | None) -> str:
    """How long a recipe trains: "4 epochs", or with train.images_per_epoch "4 epochs of 378 images
    (the same steps whatever the training-set size)"."""
    if images_per_epoch is None:
        return f"{epochs} epochs"
    return f"{epochs} epochs of {images_per_epoch} images (the same steps whatever the training-set size)"


def model_label(train_seed, number: int) -> str:
    """How a report names a model: by where it came from (``train seed 0``) when its training seed is
    known, else by its position (``model 2``)."""
    if train_seed is None or (isinstance(train_seed, float) and math.isnan(train_seed)):
        return f"model {number}"
    return f"train seed {int(train_seed)}"


def source_labels(sources: Sequence[str], train_seeds: Sequence) -> dict[str, str]:
    """Each distinct source model's name in tables, figures and metric names, in first-seen order:
    ``train seed <s>`` (where it came from) when every source has one distinct known training seed,
    else ``model <n>``. sources, train_seeds: one entry per trial (a seed None / NaN where unknown)."""
    if len(sources) != len(train_seeds):
        raise ValueError(f"sources ({len(sources)}) and train_seeds ({len(train_seeds)}) need one entry per trial")
    seeds: dict[str, object] = {}
    for source, seed in zip(sources, train_seeds):
        known = seed is not None and not (isinstance(seed, float) and math.isnan(seed))
        if known or source not in seeds:
            seeds[source] = seed if known else seeds.get(source)
    labels = {source: model_label(seed, number) for number, (source, seed) in enumerate(seeds.items(), start=1)}
    if len(set(labels.values())) < len(labels) or any(seed is None for seed in seeds.values()):
        labels = {source: model_label(None, number) for number, source in enumerate(seeds, start=1)}
    return labels
