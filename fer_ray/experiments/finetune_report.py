"""The fine-tuning report: which configuration trains best, how sure that is, how the training went.

From the sweep's finished trials (a TrialTable): one line answering "which is best" first (chosen on
validation accuracy, its test accuracy read afterwards: best_row), then the
per-configuration table (mean and 95 % CI over training seeds, clipped to [0, 1]), the reference
study's figures (accuracy vs training fraction, vs model size) when the sweep varies one of those,
learning curves (val_acc per epoch: mean and min-max band over seeds, per configuration) and the
best configuration's test confusion matrix (counts summed over its seeds).

A configuration is a grid point without the seed (``train.seed``) and the evaluated model
(``source.model``): those are what the mean and CI run over. The generic table (``aggregate``,
``table_markdown``, ``study_figures``) also serves experiments without a report of their own.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fer_ray.core.formatting import mean_interval_cell
from fer_ray.core.plots import confusion_matrix_figure, metric_curve_figure
from fer_ray.core.stats import ACCURACY_BOUNDS, SEEDS_COVER, mean_ci
from fer_ray.experiments.finetune import CONFUSION_ARTIFACT, CURVE_METRIC
from fer_ray.experiments.results import Report, TrialRecord, TrialTable

#: metrics summarised when a run has them, in this order. best_val_acc: the validation accuracy of the
#: weights that were tested (fit keeps the best epoch's); val_acc (the last epoch's) only without it
REPORT_METRICS = ("test_acc", "test_macro_f1", "best_val_acc", "val_acc", "n_params", "n_train_people")
#: facts of a configuration rather than results: one number per row, shown only where rows differ
_FACTS = ("n_params", "n_train_people")
#: what the best configuration is chosen on, the first a table has: validation, then (no validation split) test
SELECTION_METRICS = ("best_val_acc", "val_acc", "test_acc")
#: grid keys the mean and CI run over (not rows of the table)
SEED_KEYS = ("train.seed", "source.model")


def configuration_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    """The grid keys that make a configuration (every key but the seed / evaluated model)."""
    return {key: list(values) for key, values in grid.items() if key not in SEED_KEYS}


def report(table: TrialTable) -> Report:
    """The fine-tuning report of a sweep's trials (see the module docstring); metrics for the parent
    run: best_metrics."""
    finished = table.finished()
    grid = configuration_grid(table.grid)
    summary = aggregate(finished, grid)
    if summary.empty or "test_acc" not in summary:
        return Report("No finished trial reported test_acc.\n")
    best, chosen_on = best_row(summary)
    keys = list(grid)
    best_records = _records_of(finished, keys, [best[key] for key in keys])
    figures = study_figures(summary, keys, chance_accuracy(finished))
    curves = learning_curves_figure(finished, grid)
    if curves is not None:
        figures["learning_curves.png"] = curves
    confusion = best_confusion_figure(best_records, _label(keys, best))
    if confusion is not None:
        figures["best_confusion_matrix.png"] = confusion
    markdown = "\n".join([best_line(keys, best, chosen_on), "", table_markdown(summary, keys), ""])
    return Report(markdown, figures, best_metrics(summary))


def best_row(summary: pd.DataFrame) -> tuple[pd.Series, str]:
    """The best configuration of an ``aggregate`` table and the metric it was chosen on: the highest
    mean validation accuracy (SELECTION_METRICS: model selection on the validation people; its test_acc
    is only read afterwards, so the number quoted is not the largest of several test scores), or the
    highest mean test_acc where no row has a validation accuracy. Ties: the first row (grid order)."""
    chosen_on = next(m for m in SELECTION_METRICS if m in summary and summary[m].notna().any())
    return summary.loc[summary[chosen_on].idxmax()], chosen_on


def best_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """The parent run's numbers from an ``aggregate`` table, for its best_row: ``best_test_acc``, its
    CI bounds ``best_test_acc/ci_low`` / ``ci_high`` (left out when NaN, i.e. one seed),
    ``best_n_seeds`` and, when chosen on it, ``best_val_acc``; {} without test_acc."""
    if summary.empty or "test_acc" not in summary:
        return {}
    best, chosen_on = best_row(summary)
    metrics = {"best_test_acc": float(best["test_acc"]), "best_n_seeds": float(best["n_seeds"])}
    if chosen_on != "test_acc":
        metrics["best_val_acc"] = float(best[chosen_on])
    for bound in ("low", "high"):
        if not math.isnan(best[f"test_acc_{bound}"]):
            metrics[f"best_test_acc/ci_{bound}"] = float(best[f"test_acc_{bound}"])
    return metrics


def best_line(keys: list[str], best: pd.Series, chosen_on: str) -> str:
    """``best: train.lr=0.001 (chosen on best_val_acc 0.620), test_acc 0.510 [0.420–0.600] over 2
    seeds`` (the CI as in the table), or ``... test_acc 0.510 from one seed (no interval)``; chosen on
    test_acc: ``(the highest test_acc: no validation split to choose on)``."""
    if chosen_on == "test_acc":
        how = "the highest test_acc: no validation split to choose on"
    else:
        how = f"chosen on {chosen_on} {best[chosen_on]:.3f}"
    seeds = int(best["n_seeds"])
    if seeds == 1:
        return f"**best: {_label(keys, best)} ({how}), test_acc {best['test_acc']:.3f} from one seed (no interval)**"
    cell = mean_interval_cell(best["test_acc"], best["test_acc_low"], best["test_acc_high"])
    return f"**best: {_label(keys, best)} ({how}), test_acc {cell} over {seeds} seeds**"


def _label(keys: list[str], row: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={row[key]}" for key in keys) or "the sweep's one configuration"


def _records_of(table: TrialTable, keys: list[str], point: Sequence[Any]) -> list[TrialRecord]:
    return [r for r in table if all(_same(r.values.get(key), value) for key, value in zip(keys, point))]


# ------------------------------------------------------------------------ table (also generic)


def aggregate(table: TrialTable, grid: dict[str, list]) -> pd.DataFrame:
    """One row per grid point, in the order the sweep file lists the values: mean, CI low/high of
    each metric over the trials of that point (seeds / models), and their count (``n_seeds``)."""
    keys = list(grid)
    metrics = [m for m in REPORT_METRICS if any(m in record.metrics for record in table)]
    if "best_val_acc" in metrics and "val_acc" in metrics:
        metrics.remove("val_acc")
    rows = []
    for point in itertools.product(*grid.values()):
        group = _records_of(table, keys, point)
        if not group:
            continue
        row = dict(zip(keys, point))
        for metric in metrics:
            bounds = None if metric in _FACTS else ACCURACY_BOUNDS
            summary = mean_ci(pd.Series([r.metric(metric) for r in group], dtype=float), bounds=bounds)
            row.update({metric: summary["mean"], f"{metric}_low": summary["low"], f"{metric}_high": summary["high"]})
        row["n_seeds"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def _same(logged: Any, value: Any) -> bool:
    """A trial's logged value equals a grid value (YAML's 1 is the spec's 1.0; lists element-wise)."""
    if isinstance(value, (list, tuple)) and isinstance(logged, (list, tuple)):
        return len(value) == len(logged) and all(_same(a, b) for a, b in zip(logged, value))
    return logged == value


def table_markdown(table: pd.DataFrame, keys: list[str]) -> str:
    """The per-configuration table: cells ``mean [95 % CI]``, saying what the intervals cover."""
    metrics = [m for m in REPORT_METRICS if m in table and not (m in _FACTS and table[m].nunique() <= 1)]
    header = "| " + " | ".join([*keys, *metrics, "seeds"]) + " |"
    lines = [
        f"Cells: mean [95 % CI {SEEDS_COVER}; '-' with one seed]; each run's own interval over test people: "
        "its test_acc/ci_low, test_acc/ci_high.",
        "",
        header,
        "|" + "---|" * (len(keys) + len(metrics) + 1),
    ]
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in keys]
        for metric in metrics:
            cells.append(_cell(row[metric], row[f"{metric}_low"], row[f"{metric}_high"], metric))
        cells.append(str(int(row["n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(mean: float, low: float, high: float, metric: str) -> str:
    if metric == "n_params":
        return f"{mean / 1e6:.1f} M"
    if metric == "n_train_people":
        return f"{mean:.0f}"
    return mean_interval_cell(mean, low, high)


# ------------------------------------------------------------------------------------ figures


def chance_accuracy(records: Iterable[TrialRecord]) -> float | None:
    """1 / the number of classes, read from the per-class recalls (``test_recall/<class>``) the trials
    reported; None when no trial reported two or more."""
    classes = max((sum(name.startswith("test_recall/") for name in record.metrics) for record in records), default=0)
    return 1.0 / classes if classes >= 2 else None


def study_figures(table: pd.DataFrame, keys: list[str], chance: float | None = None) -> dict[str, object]:
    """The reference study's graphs: accuracy vs training fraction, accuracy vs model size (parameters);
    chance: the guessing accuracy, drawn as a dashed line (chance_accuracy)."""
    if len(keys) != 1 or "test_acc" not in table:
        return {}
    key = keys[0]
    ci = (table["test_acc_low"], table["test_acc_high"])
    seeds = int(table["n_seeds"].max()) if "n_seeds" in table else 0
    style = {"chance": chance, "mean_label": "mean over seeds" if seeds > 1 else "one run per point (no interval)"}
    if key == "data.train_fraction":
        people = "n_train_people" in table
        figure = metric_curve_figure(
            table[key] * 100,
            table["test_acc"],
            *ci,
            xlabel="training identities used (%)" + ("; labels: people" if people else ""),
            ylabel="test accuracy",
            title="Accuracy vs dataset size",
            point_labels=[f"{n:.0f}" for n in table["n_train_people"]] if people else None,
            **style,
        )
        return {"accuracy_vs_fraction.png": figure}
    if key == "model.arch" and "n_params" in table:
        figure = metric_curve_figure(
            table["n_params"] / 1e6,
            table["test_acc"],
            *ci,
            xlabel="parameters (millions)",
            ylabel="test accuracy",
            title="Accuracy vs model size",
            point_labels=list(table[key]),
            **style,
        )
        return {"accuracy_vs_model_size.png": figure}
    return {}


def curve_bands(records: Sequence[TrialRecord], metric: str = CURVE_METRIC) -> pd.DataFrame:
    """Per epoch (step) over the records' histories of ``metric``: mean, min, max and how many runs
    reached it. Columns: step, mean, low, high, n. Empty without histories."""
    points = [(step, value) for record in records for step, value in record.history.get(metric, ())]
    if not points:
        return pd.DataFrame(columns=["step", "mean", "low", "high", "n"])
    frame = pd.DataFrame(points, columns=["step", "value"])
    grouped = frame.groupby("step")["value"]
    return pd.DataFrame({"mean": grouped.mean(), "low": grouped.min(), "high": grouped.max(), "n": grouped.size()}).reset_index()


def learning_curves_figure(table: TrialTable, grid: dict[str, list]):
    """val_acc per epoch, one line (mean over seeds) and band (min-max over seeds) per configuration;
    None when no trial has a val_acc history."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    keys = list(grid)
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axis = figure.subplots()
    drawn = 0
    for point in itertools.product(*grid.values()):
        bands = curve_bands(_records_of(table, keys, point))
        if bands.empty:
            continue
        label = _label(keys, dict(zip(keys, point)))
        (line,) = axis.plot(bands["step"], bands["mean"], marker="o", label=label)
        axis.fill_between(bands["step"], bands["low"], bands["high"], color=line.get_color(), alpha=0.2)
        drawn += 1
    if not drawn:
        return None
    axis.set(xlabel="epoch", ylabel=CURVE_METRIC, title="Learning curves: mean over seeds, band = min-max", ylim=ACCURACY_BOUNDS)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axis.legend(fontsize="small")
    return figure


def best_confusion_figure(records: Sequence[TrialRecord], label: str):
    """The test confusion counts of ``records`` (one configuration's seeds) summed, as a row-normalised
    matrix figure; None when no record logged them."""
    total, classes, runs = None, None, 0
    for record in records:
        path = record.fetch(CONFUSION_ARTIFACT)
        if path is None:
            continue
        logged = json.loads(path.read_text())
        counts = np.asarray(logged["counts"], dtype=np.int64)
        total = counts if total is None else total + counts
        classes, runs = logged["classes"], runs + 1
    if total is None:
        return None
    return confusion_matrix_figure(total, classes, title=f"best ({label}): test confusion, {runs} run(s) summed, rows normalised")
