"""fer_ray.core.search: ranking, choosing the best trial on validation only, search figures."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest

from fer_ray.core.search import (
    FAILED,
    FINISHED,
    STOPPED,
    SearchReportError,
    SearchTrial,
    against_first_trial,
    best_finished_trial,
    first_trial_interval,
    parameter_figure,
    rank_trials,
    search_history_figure,
    summarise_search,
)

TRIALS = [
    SearchTrial("t0", 0, FINISHED, {"train.lr": 1e-4, "model.head": [128]}, metric=0.60, test_acc=0.55, epochs=4),
    SearchTrial("t1", 1, STOPPED, {"train.lr": 3e-3, "model.head": [256]}, metric=0.90, epochs=2),  # best metric, but stopped
    SearchTrial("t2", 2, FINISHED, {"train.lr": 1e-3, "model.head": [512, 128]}, metric=0.75, test_acc=0.70, epochs=4),
    SearchTrial("t3", 3, FAILED, {"train.lr": 5e-4, "model.head": [128]}),
    SearchTrial("t4", 4, FINISHED, {"train.lr": 2e-4, "model.head": [256]}, metric=0.75, test_acc=0.81, epochs=4),
]


def test_every_trial_is_ranked_by_the_search_metric_stopped_ones_included():
    ranked = rank_trials(TRIALS, "max")
    assert [(rank, t.name) for rank, t in ranked] == [(1, "t1"), (2, "t2"), (2, "t4"), (4, "t0"), (None, "t3")]
    assert [t.name for _, t in rank_trials(TRIALS, "min")][:4] == ["t0", "t2", "t4", "t1"]


def test_best_trial_is_finished_and_chosen_on_validation_never_on_test():
    best = best_finished_trial(TRIALS, "val_acc", "max")
    assert best.name == "t2", "t1 is stopped (fewer epochs, no test accuracy); t2 ties t4 and started first"
    assert best.test_acc == 0.70  # reported, not used: t4's better test accuracy does not make it the pick
    with pytest.raises(SearchReportError, match="'test_acc' is not a validation metric"):
        best_finished_trial(TRIALS, "test_acc", "max")
    with pytest.raises(SearchReportError, match=r"no finished trial.*\{'finished': 0, 'stopped': 1, 'failed': 1\}"):
        best_finished_trial([TRIALS[1], TRIALS[3]], "val_acc", "max")


def test_search_figures_mark_stopped_trials_and_render():
    history = search_history_figure(TRIALS, "val_acc", "max")
    axis = history.axes[0]
    assert {text.get_text() for text in axis.get_legend().get_texts()} == {"finished", "stopped early (ASHA)", "best finished so far"}
    [step] = [line for line in axis.get_lines() if line.get_label() == "best finished so far"]
    assert list(step.get_ydata()) == [0.60, 0.75, 0.75]
    assert list(step.get_xdata()) == [1, 3, 5], "trials counted from 1, as the report and the console do"
    panels = parameter_figure(TRIALS, "val_acc")
    visible = [a for a in panels.axes if a.get_visible()]
    assert [a.get_xlabel() for a in visible] == ["train.lr", "model.head"]
    assert visible[0].get_xscale() == "log"
    assert [t.get_text() for t in visible[1].get_xticklabels()] == ["[128]", "[256]", "[512, 128]"]
    for figure in (history, panels):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
    assert math.isnan(TRIALS[3].metric)


def test_search_summary_ranks_marks_and_reports_the_validation_choice():
    markdown, figures, metrics = summarise_search(TRIALS, "val_acc", "max")
    assert metrics == {"best_val_acc": 0.75, "best_trial_test_acc": 0.70}
    assert "Best finished trial: **t2** — val_acc 0.7500, test accuracy 0.7000; train.lr = 0.001, model.head = [512, 128]." in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert [row.split(" | ")[1] for row in rows] == ["t1", "t2", "t4", "t0", "t3"]
    assert rows[0].startswith("| 1 | t1 | stopped early | 0.9000 | - | 2 |")
    assert rows[1].startswith("| 2 | t2 | finished (best) | 0.7500 | 0.7000 | 4 |")
    assert rows[4].startswith("| - | t3 | failed | - | - | - |")
    assert "5 (3 finished, 1 stopped early by ASHA, 1 failed)" in markdown
    assert set(figures) == {"search_history.png", "search_parameters.png"}


def test_a_parameter_with_one_value_gets_no_panel():
    fixed = [replace(t, values={**t.values, "model.trainable": "all"}) for t in TRIALS]
    _, figures, _ = summarise_search(fixed, "val_acc", "max")
    panels = [a.get_xlabel() for a in figures["search_parameters.png"].axes if a.get_visible()]
    assert panels == ["train.lr", "model.head"], "model.trainable was 'all' in every trial"
    single = [replace(t, values={"model.trainable": "all"}) for t in TRIALS]
    assert set(summarise_search(single, "val_acc", "max")[1]) == {"search_history.png"}


def test_the_best_is_compared_with_the_first_draw_beyond_the_noise_of_the_validation_images():
    """The reference numbers: scipy's binomtest(74, 126).proportion_ci() = [0.496, 0.674]."""
    first = SearchTrial("t0", 0, FINISHED, metric=74 / 126, test_acc=0.5)
    close = SearchTrial("t5", 5, FINISHED, metric=75 / 126, test_acc=0.5)
    far = SearchTrial("t6", 6, FINISHED, metric=90 / 126, test_acc=0.5)
    interval = first_trial_interval([first, close, far], "val_acc", 126)
    assert interval[0] is first and (round(interval[1], 3), round(interval[2], 3)) == (0.496, 0.674)
    sentence = against_first_trial(close, "val_acc", 126, interval)
    assert "the best is +0.0079, +1 of 126 validation images" in sentence
    assert "[0.496-0.674]" in sentence and "inside it: not evidence that the search improved" in sentence
    assert "above it: the search found a better configuration" in against_first_trial(far, "val_acc", 126, interval)
    assert "is the best: the search did not improve on it" in against_first_trial(first, "val_acc", 126, interval)
    assert first_trial_interval([first, far], "val_acc", None) is None
    assert first_trial_interval([first, far], "val_loss", 126) is None
    assert against_first_trial(far, "val_acc", 126, None) == ""
    markdown, _, _ = summarise_search([first, close, far], "val_acc", "max", n_images=126)
    assert "Best finished trial: **t6**" in markdown and "above it" in markdown
    assert "Against the first trial" not in summarise_search([first, close, far], "val_acc", "max")[0]
    axis = summarise_search([first, close, far], "val_acc", "max", n_images=126)[1]["search_history.png"].axes[0]
    (band,) = [patch for patch in axis.patches if patch.get_label().startswith("first trial's 95 % interval")]
    assert band.get_label() == "first trial's 95 % interval (126 val images)"
    assert (round(band.get_y(), 3), round(band.get_y() + band.get_height(), 3)) == (0.496, 0.674)
