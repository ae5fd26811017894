"""A hyper-parameter search, summarised: trials ranked by the search metric, the best one chosen on
validation data only, and the figures of the search (history, metric against each parameter).

Plain Python / numpy / matplotlib on plain records (no Ray, no MLflow): the orchestrator or an
experiment's report builds the :class:`SearchTrial` list from whatever it stored. Figures are built
without pyplot, like fer_ray.core.plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

#: SearchTrial.status values
FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"
#: search metrics that are measured on validation data (the only ones a best trial may be chosen on)
VALIDATION_PREFIXES = ("val_", "val/", "cv_")


class SearchReportError(ValueError):
    """A search that cannot be summarised as asked; the message names the value at fault."""


@dataclass(frozen=True)
class SearchTrial:
    """One trial of a search.

    name: its run name; order: its start position (0-based; the history's x axis); status: FINISHED,
    STOPPED (by the scheduler, e.g. ASHA: its metric is its last report) or FAILED; values: the
    sampled hyper-parameters (dotted key -> value); metric: the search metric's last reported value
    (NaN if none); test_acc: the test accuracy of a finished trial (NaN otherwise); epochs: epochs run.
    """

    name: str
    order: int
    status: str
    values: Mapping[str, Any] = field(default_factory=dict)
    metric: float = float("nan")
    test_acc: float = float("nan")
    epochs: int | None = None


def rank_trials(trials: Sequence[SearchTrial], mode: str) -> list[tuple[int | None, SearchTrial]]:
    """Every trial with its rank by the search metric (1 = best; ties share the smaller rank; a trial
    without a metric value gets None and comes last), best first. mode: "max" or "min"."""
    _check_mode(mode)
    scored = [t for t in trials if math.isfinite(t.metric)]
    scored.sort(key=lambda t: (-t.metric if mode == "max" else t.metric, t.order))
    ranked, previous, rank = [], None, 0
    for position, trial in enumerate(scored, start=1):
        if trial.metric != previous:
            rank, previous = position, trial.metric
        ranked.append((rank, trial))
    unscored = sorted((t for t in trials if not math.isfinite(t.metric)), key=lambda t: t.order)
    return ranked + [(None, t) for t in unscored]


def best_finished_trial(trials: Sequence[SearchTrial], metric_name: str, mode: str) -> SearchTrial:
    """The finished trial with the best search metric (ties -> the earliest), chosen on validation data.

    Trials the scheduler stopped are not candidates: their metric is from fewer epochs and they have
    no test accuracy. Raises SearchReportError when ``metric_name`` is not a validation metric
    (choosing on a test metric would make the chosen trial's test accuracy optimistic) or when no
    trial finished with a metric value.
    """
    _check_mode(mode)
    if not metric_name.startswith(VALIDATION_PREFIXES):
        raise SearchReportError(
            f"search metric {metric_name!r} is not a validation metric (names starting with {list(VALIDATION_PREFIXES)}): "
            "the best trial must be chosen without looking at test data"
        )
    candidates = [t for t in trials if t.status == FINISHED and math.isfinite(t.metric)]
    if not candidates:
        counts = {status: sum(t.status == status for t in trials) for status in (FINISHED, STOPPED, FAILED)}
        raise SearchReportError(f"no finished trial has a value of {metric_name!r} to choose the best on (trials: {counts})")
    return [t for _, t in rank_trials(candidates, mode)][0]


def search_history_figure(
    trials: Sequence[SearchTrial],
    metric_name: str,
    mode: str,
    title: str = "",
    first_interval: tuple[float, float, int] | None = None,
) -> Figure:
    """The search metric of every trial against its start number (SearchTrial.order + 1: the first
    trial is 1; finished: dots; stopped early: crosses), and
    the best finished value so far as a step line. first_interval: (low, high, n images) of the first
    trial's 95 % interval (first_trial_interval), shaded across the plot: a best value inside the band
    is within the noise of the first draw."""
    _check_mode(mode)
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    axis = figure.add_subplot()
    if first_interval is not None:
        low, high, n_images = first_interval
        axis.axhspan(low, high, color="grey", alpha=0.15, label=f"first trial's 95 % interval ({n_images} val images)")
    for status, marker, colour, label in ((FINISHED, "o", "tab:blue", "finished"), (STOPPED, "x", "tab:orange", "stopped early (ASHA)")):
        chosen = [t for t in trials if t.status == status and math.isfinite(t.metric)]
        if chosen:
            axis.scatter([t.order + 1 for t in chosen], [t.metric for t in chosen], marker=marker, color=colour, label=label, zorder=3)
    finished = sorted((t for t in trials if t.status == FINISHED and math.isfinite(t.metric)), key=lambda t: t.order)
    if finished:
        values = np.array([t.metric for t in finished])
        best = np.maximum.accumulate(values) if mode == "max" else np.minimum.accumulate(values)
        axis.step([t.order + 1 for t in finished], best, where="post", color="tab:blue", alpha=0.6, label="best finished so far")
    axis.set_xlabel("trial (start order, the first is 1)")  # 1-based, as the report and console count trials
    axis.set_ylabel(metric_name)
    axis.set_title(title or f"Search history ({metric_name}, {mode})")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return figure


def parameter_figure(trials: Sequence[SearchTrial], metric_name: str, parameters: Sequence[str] | None = None) -> Figure:
    """One panel per sampled parameter: the search metric against its value (finished: dots; stopped
    early: crosses). Numbers on a log axis when positive and spanning a factor of 10 or more; other
    values (choices) as categories in first-seen order."""
    names = list(parameters) if parameters is not None else list(dict.fromkeys(k for t in trials for k in t.values))
    if not names:
        raise SearchReportError("parameter_figure needs at least one sampled parameter; the trials hold none")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.0 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, name in zip(axes, names):
        shown = [t for t in trials if name in t.values and math.isfinite(t.metric) and t.status in (FINISHED, STOPPED)]
        raw = [t.values[name] for t in shown]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if numeric:
            x = np.array(raw, dtype=float)
            if len(x) and (x > 0).all() and x.max() >= 10 * x.min():
                axis.set_xscale("log")
        else:
            categories = list(dict.fromkeys(_category(v) for v in raw))
            x = np.array([categories.index(_category(v)) for v in raw], dtype=float)
            axis.set_xticks(range(len(categories)), categories, rotation=20, fontsize=8)
        for status, marker, colour in ((FINISHED, "o", "tab:blue"), (STOPPED, "x", "tab:orange")):
            mask = np.array([t.status == status for t in shown], dtype=bool)
            if mask.any():
                axis.scatter(x[mask], np.array([t.metric for t in shown])[mask], marker=marker, color=colour, label=status)
        axis.set_xlabel(name)
        axis.set_ylabel(metric_name)
        axis.grid(alpha=0.3)
    for axis in axes[len(names) :]:
        axis.set_visible(False)
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle(f"{metric_name} against each searched parameter (x: stopped early)")
    return figure


def first_trial_interval(trials: Sequence[SearchTrial], metric_name: str, n_images: int | None) -> tuple[SearchTrial, float, float] | None:
    """(the first trial, low, high): the 95 % Clopper-Pearson interval (scipy's binomtest) of its
    accuracy on ``n_images`` validation images; None when the metric is no accuracy in [0, 1], n is
    unknown or there are no trials."""
    if not trials or not n_images or "acc" not in metric_name:
        return None
    first = min(trials, key=lambda t: t.order)
    if not 0.0 <= first.metric <= 1.0:
        return None
    from scipy.stats import binomtest  # here: the rest of the report needs no scipy

    low, high = binomtest(round(first.metric * n_images), n_images).proportion_ci(0.95)
    return first, float(low), float(high)


def against_first_trial(best: SearchTrial, metric_name: str, n_images: int, interval: tuple[SearchTrial, float, float] | None) -> str:
    """One sentence: did the search find better than its first draw, beyond the noise of measuring an
    accuracy on ``n_images`` validation images?

    The first trial (start order 0) is a random sample of the space; a search that merely matches it
    has shown nothing. The bar is the 95 % Clopper-Pearson interval of the first trial's accuracy on
    the n images (scipy's binomtest): a best value inside it is not evidence of an improvement.
    Images of one person are correlated, so the true interval is wider and the rule is lenient, as
    the sentence says. interval: first_trial_interval's answer; empty when that is None (no accuracy
    in [0, 1], or n unknown)."""
    if interval is None or not 0.0 <= best.metric <= 1.0:
        return ""
    first, low, high = interval
    if first is best:
        return f"The first trial ({first.name}, a random draw of the space) is the best: the search did not improve on it."
    gain = best.metric - first.metric
    verdict = (
        "above it: the search found a better configuration than its first draw"
        if best.metric > high
        else "inside it: not evidence that the search improved on its first draw"
    )
    return (
        f"Against the first trial ({first.name}, a random draw of the space; {metric_name} {first.metric:.4f}): the best is "
        f"{gain:+.4f}, {gain * n_images:+.0f} of {n_images} validation images. The first trial's 95 % interval is "
        f"[{low:.3f}-{high:.3f}] (Clopper-Pearson over the images; images of one person are correlated, so the true "
        f"interval is wider) and the best lies {verdict}."
    )


def summarise_search(
    trials: Sequence[SearchTrial], metric_name: str, mode: str, n_images: int | None = None
) -> tuple[str, dict[str, Figure], dict[str, float]]:
    """The report of a search: (markdown, figures, parent-run metrics).

    Markdown: the best finished trial (chosen on ``metric_name``, a validation metric) with its test
    accuracy and how it compares with the first trial on ``n_images`` validation images
    (against_first_trial), then every trial ranked by the search metric, stopped trials marked. Figures:
    ``search_history.png`` and ``search_parameters.png``. Parent metrics: ``best_val_acc`` (the chosen
    trial's search metric) and ``best_trial_test_acc`` (its test accuracy, looked at only after choosing).
    """
    best = best_finished_trial(trials, metric_name, mode)
    interval = first_trial_interval(trials, metric_name, n_images)
    parameters = list(dict.fromkeys(k for t in trials for k in t.values))
    counts = {status: sum(t.status == status for t in trials) for status in (FINISHED, STOPPED, FAILED)}
    lines = [
        "## Hyper-parameter search",
        "",
        f"Trials: {len(trials)} ({counts[FINISHED]} finished, {counts[STOPPED]} stopped early by ASHA, {counts[FAILED]} failed). "
        f"Ranked by {metric_name} ({mode}), the search metric, measured on the validation people; a stopped trial's "
        "value is from its last epoch. The best trial is chosen among finished trials on that metric alone; its test "
        "accuracy is read only afterwards (one number on one test set: no interval over seeds; see test_acc/ci_low, "
        "ci_high of its run for the interval over test people).",
        "",
        f"Best finished trial: **{best.name}** — {metric_name} {best.metric:.4f}, test accuracy {best.test_acc:.4f}; "
        + ", ".join(f"{k} = {_value_text(best.values[k])}" for k in parameters if k in best.values)
        + ".",
        "",
        *([against, ""] if (against := against_first_trial(best, metric_name, n_images, interval)) else []),
        "| rank | trial | status | " + f"{metric_name} | test_acc | epochs | " + " | ".join(parameters) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(parameters),
    ]
    for rank, trial in rank_trials(trials, mode):
        status = {STOPPED: "stopped early", FAILED: "failed"}.get(trial.status, "finished") + (" (best)" if trial is best else "")
        cells = [
            str(rank) if rank else "-",
            trial.name,
            status,
            _number(trial.metric),
            _number(trial.test_acc),
            "-" if trial.epochs is None else str(trial.epochs),
            *[_value_text(trial.values[k]) if k in trial.values else "-" for k in parameters],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    band = None if interval is None else (interval[1], interval[2], n_images)
    figures = {"search_history.png": search_history_figure(trials, metric_name, mode, first_interval=band)}
    varied = [k for k in parameters if len({repr(t.values[k]) for t in trials if k in t.values}) > 1]
    if varied:  # a choice of one value gives a panel with one column: nothing to compare
        figures["search_parameters.png"] = parameter_figure(trials, metric_name, varied)
    return "\n".join(lines) + "\n", figures, {"best_val_acc": float(best.metric), "best_trial_test_acc": float(best.test_acc)}


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return _category(value)


def _category(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise SearchReportError(f"mode must be 'max' or 'min', got {mode!r}")
