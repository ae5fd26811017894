"""How numbers with an interval appear in report tables: ``0.850 [0.800–0.900]``.

One formatter for every report, so the cells read the same across experiments. An interval with a
missing bound (NaN: one seed, one model) prints as ``-``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


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
