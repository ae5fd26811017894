"""The SVM section of the sweep report: GridSearchCV's pick per source model, CNN vs tuned vs untuned
SVM, the CV heatmap (see the package docstring)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from fer_ray.core.plots import confusion_matrix_figure
from fer_ray.core.svm import GRID_KEYS, best_point, param_grid, rank_test_scores
from fer_ray.core.svm_plots import baseline_bars_figure, cv_heatmap_figure
from fer_ray.experiments.results import Report, TrialTable
from fer_ray.experiments.svm.settings import Settings
from fer_ray.experiments.svm.trial import TAG_CLASSES, TAG_CONFUSION, TAG_FEATURES


def grid_axes(table: TrialTable) -> dict[str, list]:
    """The sweep's C / gamma / kernel values in grid order (its grid lists, or the base settings'
    single value), normalised through Settings (100 -> 100.0, "0.01" -> 0.01)."""
    base = table.settings
    axes = {}
    for key in GRID_KEYS:
        values = table.settings_grid.get(key, [getattr(base, key)])
        axes[key] = [getattr(Settings.model_validate({**base.model_dump(), key: value}), key) for value in values]
    return axes


def grid_results(table: TrialTable) -> pd.DataFrame:
    """The SVM trials with their point (C, gamma, kernel), ``grid_index`` (the point's place in
    sklearn ParameterGrid order over the sweep's lists) and ``rank`` (GridSearchCV's
    rank_test_score within its source model), sorted by source model and grid index."""
    points = param_grid(**grid_axes(table))
    index = {_point_key(p): i for i, p in enumerate(points)}
    rows = []
    for record in table:
        point = record.settings.point()
        if _point_key(point) not in index:
            raise ValueError(f"run {record.run_id}: point {point} is not in the sweep's grid {points}")
        rows.append(
            {
                **point,
                "grid_index": index[_point_key(point)],
                "source": record.source_model or "",
                "run_id": record.run_id,
                **record.metrics,
                TAG_CONFUSION: record.tags.get(TAG_CONFUSION),
                TAG_CLASSES: record.tags.get(TAG_CLASSES),
            }
        )
    table = pd.DataFrame(rows).sort_values(["source", "grid_index"], kind="stable").reset_index(drop=True)
    table["rank"] = 0
    for _, group in table.groupby("source", sort=False):
        table.loc[group.index, "rank"] = rank_test_scores(_as_results(group))
    return table


def choose_best(table: pd.DataFrame) -> pd.DataFrame:
    """One row per source model: the point GridSearchCV would pick (best mean CV accuracy, ties to
    the first in grid order), with its refit test scores from its own run."""
    best_rows = []
    for _, group in table.groupby("source", sort=False):
        best_rows.append(best_point(_as_results(group))["row"])
    return pd.DataFrame(best_rows).reset_index(drop=True)


def report(trials: TrialTable) -> Report:
    """The SVM section of the sweep report: best point, CNN vs tuned vs untuned SVM, CV heatmap; the
    headline numbers as sweep-level metrics for the parent run. With several source models each
    picks its own best point; headline numbers are means over models.
    """
    trials = trials.finished()
    cfg = trials.settings
    axes = grid_axes(trials)
    table = grid_results(trials)
    best = choose_best(table)
    headline = {
        "cnn_test_acc": float(best["cnn_test_acc"].mean()),
        "cnn_test_macro_f1": float(best["cnn_test_macro_f1"].mean()),
        "svm_tuned_test_acc": float(best["test_acc"].mean()),
        "svm_tuned_test_macro_f1": float(best["test_macro_f1"].mean()),
        "svm_tuned_cv_acc": float(best["cv_acc_mean"].mean()),
        "svm_untuned_test_acc": float(best["untuned_test_acc"].mean()),
        "svm_untuned_test_macro_f1": float(best["untuned_test_macro_f1"].mean()),
        "svm_grid_points": float(len(param_grid(**axes))),
    }
    mean_cv = table.groupby("grid_index")["cv_acc_mean"].mean()
    points = param_grid(**axes)
    overall = best_point([{"mean_test_score": float(mean_cv.get(i, np.nan)), "point": p} for i, p in enumerate(points)])["point"]
    figures = {
        "svm_cv_heatmap.png": cv_heatmap_figure(
            {_point_key(p): float(mean_cv[i]) for i, p in enumerate(points) if i in mean_cv.index},
            axes["C"],
            axes["gamma"],
            axes["kernel"],
            best=_point_key(overall),
            title=f"SVM: mean {cfg.folds}-fold subject-disjoint CV accuracy",
        ),
        "svm_vs_cnn.png": baseline_bars_figure(
            {
                "fine-tuned CNN": headline["cnn_test_acc"],
                "tuned SVM": headline["svm_tuned_test_acc"],
                "untuned SVM": headline["svm_untuned_test_acc"],
            }
        ),
    }
    if best[TAG_CONFUSION].map(lambda value: isinstance(value, str)).all():
        # counts summed over source models (one test split): the rows, normalised, average them
        confusion = np.sum([json.loads(value) for value in best[TAG_CONFUSION]], axis=0)
        figures["svm_confusion_matrix.png"] = confusion_matrix_figure(
            confusion, json.loads(best[TAG_CLASSES].iloc[0]), title=f"tuned SVM ({_point_text(best.iloc[0])}): test confusion"
        )
    features = sorted({r.tags[TAG_FEATURES] for r in trials if TAG_FEATURES in r.tags})
    return Report(_report_markdown(cfg, table, best, headline, features), figures, headline)


def _report_markdown(cfg: Settings, table: pd.DataFrame, best: pd.DataFrame, headline: dict, features: list[str]) -> str:
    n_models = len(best)
    chosen = "; ".join(f"{_point_text(row)} (mean CV acc {row['cv_acc_mean']:.3f} ± {row['cv_acc_std']:.3f})" for _, row in best.iterrows())
    lines = [
        "## SVM baseline",
        "",
        f"- features: {features[0] if features else cfg.features}; standardisation"
        + (f" + PCA({cfg.pca_components})" if cfg.pca_components else "")
        + " fitted inside each fold",
        f"- selection: {cfg.folds}-fold cross-validation, folds grouped by identity (no person on both sides), over the "
        + ("training + validation" if cfg.include_val else "training")
        + " identities; the point with the best mean CV "
        "accuracy wins, ties to the first in grid order (GridSearchCV's rule); the test split is never used to choose",
        f"- chosen point{'s' if n_models > 1 else ''}: {chosen}",
        "",
        "| model | test accuracy | test macro-F1 |",
        "|---|---|---|",
        f"| fine-tuned CNN (source model{'s' if n_models > 1 else ''}) | {headline['cnn_test_acc']:.3f} | {headline['cnn_test_macro_f1']:.3f} |",
        f"| tuned SVM | {headline['svm_tuned_test_acc']:.3f} | {headline['svm_tuned_test_macro_f1']:.3f} |",
        f"| untuned SVM (sklearn defaults: C=1, gamma=scale, rbf) | {headline['svm_untuned_test_acc']:.3f} | {headline['svm_untuned_test_macro_f1']:.3f} |",
        "",
        f"{'Means over ' + str(n_models) + ' source models, each with its own best point. ' if n_models > 1 else ''}"
        "The reference study reported 0.95 (fine-tuned CNN) vs 0.72 (tuned SVM, C=100, gamma=auto, rbf) with an image-level split.",
        "",
        "Top grid points by mean CV accuracy (test accuracy shown for reference only, not used to choose):",
        "",
        "| rank | C | gamma | kernel | mean CV acc | std | test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    top = table.sort_values(["rank", "grid_index"], kind="stable").drop_duplicates("grid_index").head(10)
    for _, row in top.iterrows():
        lines.append(
            f"| {int(row['rank'])} | {row['C']:g} | {row['gamma']} | {row['kernel']} | {row['cv_acc_mean']:.3f} | "
            f"{row['cv_acc_std']:.3f} | {row['test_acc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _as_results(group: pd.DataFrame) -> list[dict]:
    """Rows as core.svm results (mean_test_score) in the group's (grid) order, each keeping its row."""
    return [{"mean_test_score": float(row["cv_acc_mean"]), "row": row} for _, row in group.iterrows()]


def _point_key(point) -> tuple:
    return (float(point["C"]), point["gamma"], point["kernel"])


def _point_text(point) -> str:
    return f"C={point['C']:g}, gamma={point['gamma']}, kernel={point['kernel']}"
