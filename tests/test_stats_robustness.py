"""bootstrap_ci and mcnemar (fer_ray.core.stats) against hand computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fer_ray.core.stats import StatsInputError, bootstrap_ci, mcnemar


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two classifiers with the given counts of each outcome."""
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * neither)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * neither)
    return a, b


def test_mcnemar_exact_matches_the_binomial_sum_by_hand():
    a, b = _pairs(both=20, only_a=6, only_b=1, neither=3)
    result = mcnemar(a, b)
    # two-sided exact: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * (1 + 7) / 2**7
    assert (result["b"], result["c"], result["n"]) == (6, 1, 30)
    assert result["exact"] is True
    assert result["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)
    assert result["statistic"] == 1.0


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    a, b = _pairs(both=50, only_a=30, only_b=10, neither=5)
    result = mcnemar(a, b)
    statistic = (abs(30 - 10) - 1) ** 2 / 40
    assert result["exact"] is False
    assert result["statistic"] == pytest.approx(statistic)
    # chi-square with 1 degree of freedom: P(X > x) = erfc(sqrt(x / 2))
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))
    assert mcnemar(a, b, exact=True)["p_value"] == pytest.approx(stats.binomtest(10, 40).pvalue)


def test_mcnemar_without_discordant_images_has_p_one_and_is_symmetric():
    a, b = _pairs(both=5, only_a=0, only_b=0, neither=5)
    assert mcnemar(a, b)["p_value"] == 1.0
    a, b = _pairs(both=5, only_a=4, only_b=1, neither=5)
    forward, backward = mcnemar(a, b), mcnemar(b, a)
    assert (forward["b"], forward["c"]) == (backward["c"], backward["b"])
    assert forward["p_value"] == pytest.approx(backward["p_value"])


@pytest.mark.parametrize(
    "a, b, fragment",
    [
        (np.array([1, 0, 1]), np.array([True, False, True]), "correct_a must be a 1-D bool array"),
        (np.array([True, False]), np.array([True, False, True]), "same length, got 2 and 3"),
    ],
)
def test_mcnemar_rejects_bad_input_naming_it(a, b, fragment):
    with pytest.raises(StatsInputError, match=fragment):
        mcnemar(a, b)


def test_bootstrap_ci_equals_scipy_percentile_interval_with_the_same_generator():
    values = np.array([0.65, 0.66, 0.67, 0.67, 0.68, 0.66, 0.65, 0.67, 0.68, 0.66])
    result = bootstrap_ci(values, np.mean, n_boot=2000, seed=3)
    reference = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(3))
    assert result["estimate"] == pytest.approx(values.mean())
    assert result["low"] == pytest.approx(reference.confidence_interval.low)
    assert result["high"] == pytest.approx(reference.confidence_interval.high)
    assert result["n"] == 10 and result["n_boot"] == 2000


def test_bootstrap_ci_of_the_median_covers_the_true_median():
    true_median = 0.67
    sample = true_median + np.random.default_rng(0).normal(0.0, 0.01, size=201)
    result = bootstrap_ci(sample, np.median, n_boot=2000)
    assert result["low"] < true_median < result["high"]
    assert result["high"] - result["low"] < 0.01, "201 draws pin the median to well within one sigma"


def test_bootstrap_ci_one_value_has_no_interval_and_nans_are_dropped():
    result = bootstrap_ci([0.5, float("nan")])
    assert result["n"] == 1 and result["estimate"] == 0.5
    assert math.isnan(result["low"]) and math.isnan(result["high"])
    assert bootstrap_ci([0.4, 0.4, 0.4])["low"] == pytest.approx(0.4)
    with pytest.raises(StatsInputError, match="confidence must be in"):
        bootstrap_ci([0.1, 0.2], confidence=95)
