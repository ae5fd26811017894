import numpy as np
import pytest
from scipy import stats

from fer_ray.core.stats import ACCURACY_BOUNDS, StatsInputError, mean_ci


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


def test_accuracy_interval_over_two_seeds_stays_in_the_unit_interval():
    # the example: 0.461 [-0.311-1.232] from a plain t interval over two seeds
    plain = mean_ci([0.4, 0.522])
    assert plain["low"] < 0 and plain["high"] > 1
    bounded = mean_ci([0.4, 0.522], bounds=ACCURACY_BOUNDS)
    assert bounded["mean"] == pytest.approx(0.461)
    assert (bounded["low"], bounded["high"]) == (0.0, 1.0)
    near_one = mean_ci([0.97, 1.0, 0.99], bounds=ACCURACY_BOUNDS)
    assert near_one["low"] > 0.9 and near_one["high"] == 1.0


def test_bounded_interval_covers_as_often_as_the_t_interval_and_checks_its_input():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        values = np.clip(rng.normal(0.93, 0.04, size=3), 0, 1)
        result = mean_ci(values, bounds=ACCURACY_BOUNDS)
        assert 0 <= result["low"] <= result["high"] <= 1
        hits += result["low"] <= 0.93 <= result["high"]
    assert hits / 400 >= 0.90
    with pytest.raises(StatsInputError, match=r"within bounds \(0.0, 1.0\), got min 0.5, max 1.5"):
        mean_ci([0.5, 1.5], bounds=ACCURACY_BOUNDS)
