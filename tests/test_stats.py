import numpy as np
import pytest
from scipy import stats

from fer_ray.core.stats import mean_ci


def test_mean_ci_matches_scipy_t_interval():
    values = [0.81, 0.84, 0.79, 0.88]
    result = mean_ci(values)
    low, high = stats.t.interval(0.95, df=3, loc=np.mean(values), scale=stats.sem(values))
    assert result["n"] == 4
    assert result["mean"] == pytest.approx(np.mean(values))
    assert result["low"] == pytest.approx(low) and result["high"] == pytest.approx(high)


def test_mean_ci_single_value_has_no_interval_and_nans_are_dropped():
    result = mean_ci([0.5, float("nan")])
    assert result["n"] == 1 and result["mean"] == 0.5
    assert np.isnan(result["low"]) and np.isnan(result["high"])
    assert mean_ci([])["n"] == 0


def test_mean_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        r = mean_ci(rng.normal(1.0, 0.2, size=5))
        hits += r["low"] <= 1.0 <= r["high"]
    assert 0.91 <= hits / 400 <= 0.99
