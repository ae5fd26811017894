"""Statistics over seeds, repeats and subjects. Plain numpy/scipy; results are plain dicts."""

from __future__ import annotations

import numpy as np
from scipy import stats


class StatsInputError(ValueError):
    """Input a statistic cannot use; the message names the argument and its value."""


#: The range of an accuracy (or any fraction): pass as ``bounds`` so its interval stays inside.
ACCURACY_BOUNDS = (0.0, 1.0)

#: What mean_ci's interval covers, in one line for report tables.
SEEDS_COVER = "over training seeds (or models) on one test set: Student t of the mean, clipped to [0, 1]"


def mean_ci(values, confidence: float = 0.95, bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of independent runs (e.g. seeds).

    values: 1-D sequence of floats (NaNs dropped). With one value the interval is (nan, nan): one
    seed says nothing about seed-to-seed spread, and the report shows that rather than hiding it.
    bounds: the range the quantity cannot leave (ACCURACY_BOUNDS for accuracies); the t interval is
    intersected with it. Why clipping, not a logit-scale interval or a bootstrap: the true mean lies
    inside the bounds, so cutting off the part of the t interval outside them never removes it: the
    coverage is exactly the t interval's, and the width stays honest (two seeds give t = 12.7 standard
    errors each side, often all of [0, 1]: two seeds say little, and the table should show that).
    A logit-scale t interval breaks at accuracies of exactly 0 or 1 (common on small test sets) and
    centres on the mean logit, not the mean; a bootstrap over 2-3 seeds has 3-10 distinct resamples
    and covers far below its nominal level. It covers seed-to-seed (model-to-model) variation; the
    test set is held fixed (see fer_ray.core.group_stats.accuracy_ci for the variation over test people).
    Returns {"mean", "low", "high", "std", "n"}.
    """
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = int(array.size)
    if bounds is not None and not bounds[0] < bounds[1]:
        raise StatsInputError(f"bounds must be (low, high) with low < high, got {bounds}")
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "std": float("nan"), "n": 0}
    if bounds is not None and ((array < bounds[0]).any() or (array > bounds[1]).any()):
        raise StatsInputError(f"values must lie within bounds {bounds}, got min {array.min()}, max {array.max()}")
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "std": float("nan"), "n": 1}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * std / np.sqrt(n))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "std": std, "n": n}


def mean_ci_metrics(name: str, values, bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """A report's parent-run metrics for one quantity over models (or seeds): ``name`` = the mean,
    and ``name/ci_low``, ``name/ci_high`` (mean_ci's 95 % interval, within ``bounds``) from two values
    on. values: 1-D floats, NaNs dropped; none left: {}."""
    summary = mean_ci(values, bounds=bounds)
    if summary["n"] == 0:
        return {}
    metrics = {name: float(summary["mean"])}
    if summary["n"] > 1:
        metrics.update({f"{name}/ci_low": float(summary["low"]), f"{name}/ci_high": float(summary["high"])})
    return metrics


# ---------------------------------------------------------------------------------------------
# Repeats and paired comparisons (noise / FGSM experiments)
# ---------------------------------------------------------------------------------------------

#: mcnemar() uses the exact binomial test when there are fewer discordant pairs than this (the
#: chi-square approximation is poor for small counts; the usual rule of thumb is 25).
MCNEMAR_EXACT_BELOW = 25


def bootstrap_ci(
    values,
    statistic=np.median,
    n_boot: int = 9999,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "percentile",
) -> dict[str, float]:
    """Bootstrap confidence interval of ``statistic`` over independent values (e.g. noise repeats).

    values: 1-D floats (NaNs dropped). statistic: a numpy reduction that takes ``axis`` (np.median,
    np.mean). Resampling is scipy.stats.bootstrap with ``n_boot`` resamples from a generator seeded
    by ``seed``; ``method`` is scipy's ("percentile" by default: with ~10 repeats, ties and a median,
    BCa's acceleration estimate is unstable). With one value the interval is (nan, nan), as in
    mean_ci. Returns {"estimate" (statistic of the values), "low", "high", "n", "n_boot", "confidence"}.
    """
    if not 0 < confidence < 1:
        raise StatsInputError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise StatsInputError(f"n_boot must be at least 1, got {n_boot}")
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise StatsInputError(f"values must be 1-D, got shape {array.shape}")
    array = array[np.isfinite(array)]
    result = {
        "estimate": float("nan"),
        "low": float("nan"),
        "high": float("nan"),
        "n": int(array.size),
        "n_boot": n_boot,
        "confidence": confidence,
    }
    if array.size == 0:
        return result
    result["estimate"] = float(statistic(array))
    if array.size == 1:
        return result
    interval = stats.bootstrap(
        (array,),
        statistic,
        n_resamples=n_boot,
        confidence_level=confidence,
        method=method,
        vectorized=True,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    result.update(low=float(interval.low), high=float(interval.high))
    return result


def mcnemar(correct_a, correct_b, exact: bool | None = None) -> dict[str, float]:
    """McNemar's test of two classifiers (or one model clean vs perturbed) on the SAME images.

    correct_a, correct_b: bool (N,), per image whether each got it right. Only discordant images
    count: b = a right and b wrong, c = a wrong and b right. exact=None picks the exact two-sided
    binomial test (scipy.stats.binomtest(b, b + c, 0.5)) when b + c < MCNEMAR_EXACT_BELOW, else the
    chi-square test with continuity correction, (|b - c| - 1)^2 / (b + c) on 1 degree of freedom.
    statistic: min(b, c) for the exact test (statsmodels' convention), the chi-square value otherwise.
    With no discordant image the p-value is 1. Returns {"b", "c", "statistic", "p_value", "exact",
    "n"} (b, c and n as ints, exact as a bool).
    """
    a, b_flags = _bool_vector(correct_a, "correct_a"), _bool_vector(correct_b, "correct_b")
    if a.shape != b_flags.shape:
        raise StatsInputError(f"correct_a and correct_b must have the same length, got {a.size} and {b_flags.size}")
    b = int(np.sum(a & ~b_flags))
    c = int(np.sum(~a & b_flags))
    discordant = b + c
    use_exact = discordant < MCNEMAR_EXACT_BELOW if exact is None else bool(exact)
    if discordant == 0:
        statistic, p_value = 0.0, 1.0
    elif use_exact:
        statistic, p_value = float(min(b, c)), float(stats.binomtest(b, discordant, 0.5).pvalue)
    else:
        statistic = (abs(b - c) - 1.0) ** 2 / discordant
        p_value = float(stats.chi2.sf(statistic, df=1))
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": min(p_value, 1.0), "exact": use_exact, "n": int(a.size)}


def _bool_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype != bool:
        raise StatsInputError(f"{name} must be a 1-D bool array (per image: correct?), got shape {array.shape} dtype {array.dtype}")
    return array
