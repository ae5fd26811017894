"""Statistics over seeds, repeats and subjects. Plain numpy/scipy; results are plain dicts."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_ci(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of independent runs (e.g. seeds).

    values: 1-D sequence of floats (NaNs dropped). With one value the interval is (nan, nan): one
    seed says nothing about seed-to-seed spread, and the report shows that rather than hiding it.
    Returns {"mean", "low", "high", "std", "n"}.
    """
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = int(array.size)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "std": float("nan"), "n": 0}
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "std": float("nan"), "n": 1}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * std / np.sqrt(n))
    return {"mean": mean, "low": mean - half, "high": mean + half, "std": std, "n": n}
