"""The one report-cell formatter: estimate and interval, '-' for a missing bound."""

from __future__ import annotations

import math

from fer_ray.core.formatting import interval_text, mean_interval_cell, source_labels, summary_cell
from fer_ray.core.stats import mean_ci


def test_cells_show_mean_and_interval_with_an_en_dash_and_a_dash_without_one():
    assert mean_interval_cell(0.85, 0.8, 0.9) == "0.850 [0.800–0.900]"
    assert mean_interval_cell(0.5, math.nan, math.nan) == "0.500 [-]"
    assert interval_text(0.1, None) == "-" and interval_text(0.12345, 0.5, digits=2) == "0.12–0.50"
    one_seed, three_seeds = mean_ci([0.7]), mean_ci([0.6, 0.7, 0.8])
    assert summary_cell(one_seed) == "0.700 [-]"
    assert summary_cell(three_seeds) == f"0.700 [{three_seeds['low']:.3f}–{three_seeds['high']:.3f}]"


def test_models_are_named_by_their_training_seed_not_by_position():
    sources = ["runs:/a/model/model.pt", "runs:/b/model/model.pt", "runs:/a/model/model.pt"]
    assert source_labels(sources, [0.0, 1.0, 0.0]) == {"runs:/a/model/model.pt": "train seed 0", "runs:/b/model/model.pt": "train seed 1"}
    unknown = source_labels(sources, [math.nan, None, math.nan])
    assert unknown == {"runs:/a/model/model.pt": "model 1", "runs:/b/model/model.pt": "model 2"}
    assert source_labels(sources, [None, 1.0, 0.0])["runs:/a/model/model.pt"] == "train seed 0", "a seed known on any trial of the model"
    assert set(source_labels(sources, [0.0, 0.0, 0.0]).values()) == {"model 1", "model 2"}, "one seed for two models names neither by it"
