"""Demographic bias: how a trained model's test results differ between groups of people.

For every group attribute the dataset records (gender on KDEF and the synthetic faces, race and
gender on RADIATE, camera angle on KDEF) and that has at least two groups in the test split, per
group: accuracy with a subject-clustered bootstrap CI, and per class the recall (TPR) and the
one-vs-rest false-positive rate (FPR). Across groups: the largest accuracy gap (best - worst) and
the min/max ratio, each with its bootstrap CI; per class the same for TPR and FPR; with exactly two
groups, a subject-level permutation test of the accuracy difference. Uncertainty is over SUBJECTS
(identities), since a person's images are not independent (fer_ray.core.groups).

Metric names (``<a>`` attribute, ``<g>`` group, ``<c>`` class; a rate a group cannot have, e.g. the
TPR of a class it has no image of, is left out):
  n/<a>/<g>, acc/<a>/<g>, acc_low/<a>/<g>, acc_high/<a>/<g>, tpr/<a>/<g>/<c>, fpr/<a>/<g>/<c>,
  acc_gap/<a>, acc_gap_low/<a>, acc_gap_high/<a>, acc_ratio/<a> (+ _low, _high),
  acc_diff/<a>, p_value/<a> (two groups), tpr_gap/<a>/<c>, tpr_ratio/<a>/<c>, fpr_gap/<a>/<c>,
  fpr_ratio/<a>/<c> (+ _low, _high), and test_acc, n_test.
Attributes with a single group (e.g. angle when only straight-on images are used) are skipped and
named in the tag ``fer_ray.bias_skipped`` and in the report.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from fer_ray.core.config import Strict
from fer_ray.core.evaluate import UNKNOWN_GROUP, predict_proba
from fer_ray.core.formatting import interval_text
from fer_ray.core.groups import GroupStatsError, cluster_bootstrap_ci, gap_summary, group_rates, permutation_test_acc_diff
from fer_ray.core.insight_plots import group_accuracy_figure
from fer_ray.core.stats import mean_ci
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable

#: the group attributes studied by default, in report order
DEFAULT_ATTRIBUTES: tuple[str, ...] = ("gender", "race", "angle")
TAG_STUDIED = "fer_ray.bias_attributes"
TAG_SKIPPED = "fer_ray.bias_skipped"
#: JSON {attribute: [group, ...]}: the groups of each studied attribute, as they appear in metric names
TAG_GROUPS = "fer_ray.bias_groups"
#: JSON [class, ...]: the class names of the per-class rate metrics
TAG_CLASSES = "fer_ray.bias_classes"
_UNSAFE_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. :]")


class Settings(Strict):
    """The ``eval:`` section of a bias sweep."""

    attributes: list[Literal["gender", "race", "angle", "session"]] = Field(
        list(DEFAULT_ATTRIBUTES), min_length=1, description="group attributes to study (those the dataset lacks are skipped)"
    )
    n_boot: int = Field(1000, ge=50, description="bootstrap replicates (subjects resampled within groups)")
    n_perm: int = Field(2000, ge=50, description="permutations of the two-group accuracy test")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    class_rates: bool = Field(True, description="per-class TPR / FPR per group and their gaps")
    seed: int = Field(0, description="seed of the bootstrap and the permutations")

    @field_validator("attributes")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"attributes must not repeat, got {values}")
        return values


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Per-group test results of trial.model_file for every studied attribute (see module docstring)."""
    cfg: Settings = trial.settings
    model, data = load_model_and_data(trial)
    y_true = data.test.labels.numpy()
    y_pred = predict_proba(model, data.test.images).argmax(dim=1).numpy()
    subjects = data.dataset.identities[data.test.indices]
    metrics = {"test_acc": float(np.mean(y_true == y_pred)), "n_test": float(len(y_true))}
    studied, skipped = {}, {}
    for attribute in cfg.attributes:
        groups = data.dataset.attribute(attribute)[data.test.indices]
        reason = _skip_reason(groups)
        if reason:
            skipped[attribute] = reason
            continue
        with warnings.catch_warnings():
            # a ratio whose best rate is 0 in every bootstrap replicate is NaN, and left out below
            warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
            metrics.update(attribute_metrics(attribute, y_true, y_pred, groups, subjects, data.dataset.classes, cfg))
        studied[attribute] = sorted({metric_part(group) for group in _keys(groups)})
    reporter.tags({
        "fer_ray.dataset_fingerprint": data.fingerprint,
        "fer_ray.protocol": data.protocol,
        TAG_STUDIED: ",".join(studied) or "none",
        TAG_SKIPPED: "; ".join(f"{a}: {why}" for a, why in skipped.items()) or "none",
        TAG_GROUPS: json.dumps(studied),
        TAG_CLASSES: json.dumps([metric_part(c) for c in data.dataset.classes]),
    })
    if studied:
        bars = {a: _group_rows(metrics.__getitem__, a, names) for a, names in studied.items()}
        reporter.figure(group_accuracy_figure(bars, f"{trial.sweep}: test accuracy per group ({cfg.confidence * 100:g} % subject bootstrap CI)"), "bias_accuracy.png")
    return {name: value for name, value in metrics.items() if np.isfinite(value)}


def attribute_metrics(attribute: str, y_true, y_pred, groups, subjects, classes, cfg: Settings) -> dict[str, float]:
    """The metrics of one attribute (names in the module docstring; NaN where undefined).

    y_true, y_pred: int (N,) class indices; groups: (N,) values of ``attribute`` (None -> "unknown");
    subjects: (N,) identities.
    """
    boot = {"subjects": subjects, "n_boot": cfg.n_boot, "seed": cfg.seed, "confidence": cfg.confidence}
    rates = group_rates(y_true, y_pred, groups, classes)
    metrics: dict[str, float] = {}
    for group, values in rates.items():
        name = f"{attribute}/{metric_part(group)}"
        interval = cluster_bootstrap_ci(y_true, y_pred, groups, statistic="acc", group=group, **boot)
        metrics.update({f"n/{name}": float(values["n"]), f"acc/{name}": values["acc"],
                        f"acc_low/{name}": interval["low"], f"acc_high/{name}": interval["high"]})
        if cfg.class_rates:
            metrics.update({f"tpr/{name}/{c}": values["tpr"][c] for c in classes})
            metrics.update({f"fpr/{name}/{c}": values["fpr"][c] for c in classes})
    gap = gap_summary(rates)
    for statistic in ("acc_gap", "acc_ratio"):
        interval = cluster_bootstrap_ci(y_true, y_pred, groups, statistic=statistic, **boot)
        metrics.update({f"{statistic}/{attribute}": gap[statistic],
                        f"{statistic}_low/{attribute}": interval["low"], f"{statistic}_high/{attribute}": interval["high"]})
    if len(rates) == 2:
        try:
            test = permutation_test_acc_diff(np.asarray(y_true) == np.asarray(y_pred), groups, subjects, n_perm=cfg.n_perm, seed=cfg.seed)
            metrics.update({f"acc_diff/{attribute}": test["diff"], f"p_value/{attribute}": test["p_value"]})
        except GroupStatsError:  # a subject in both groups (e.g. angles): labels cannot be permuted per subject
            pass
    if cfg.class_rates:
        metrics.update(_class_rate_gaps(attribute, np.asarray(y_true), np.asarray(y_pred), np.asarray(groups, dtype=object), classes, boot))
    return metrics


def _class_rate_gaps(attribute: str, y_true, y_pred, groups, classes, boot: dict) -> dict[str, float]:
    """tpr/fpr gap and ratio per class with their CIs, through cluster_bootstrap_ci's accuracy statistics:
    a group's TPR of class c IS its accuracy on its images of class c, and its FPR of c is the
    'accuracy' of the indicator (predicted c) against all-ones on its images of other classes."""
    metrics: dict[str, float] = {}
    all_groups = set(_keys(groups))
    for c, name in enumerate(classes):
        own, other = y_true == c, y_true != c
        cases = {
            "tpr": (own, y_true[own], y_pred[own]),
            "fpr": (other, (y_pred[other] == c).astype(np.int64), np.ones(int(other.sum()), dtype=np.int64)),
        }
        for rate, (rows, true, predicted) in cases.items():
            if set(_keys(groups[rows])) != all_groups:  # some group has no image to measure the rate on
                continue
            subset = {**boot, "subjects": np.asarray(boot["subjects"])[rows]}
            for statistic, label in (("acc_gap", "gap"), ("acc_ratio", "ratio")):
                interval = cluster_bootstrap_ci(true, predicted, groups[rows], statistic=statistic, **subset)
                key = f"{rate}_{label}"
                metrics.update({f"{key}/{attribute}/{name}": interval["estimate"],
                                f"{key}_low/{attribute}/{name}": interval["low"], f"{key}_high/{attribute}/{name}": interval["high"]})
    return metrics


def metric_part(value) -> str:
    """A group value as one segment of an MLflow metric name ('/' and other unsafe characters -> '_')."""
    return _UNSAFE_METRIC_CHARS.sub("_", str(value)) or "_"


# ----------------------------------------------------------------------------------------------




def _keys(groups) -> list:
    return [UNKNOWN_GROUP if g is None else g for g in groups]


def _skip_reason(groups) -> str | None:
    """Why an attribute cannot be compared across groups in this test split, or None."""
    if all(g is None for g in groups):
        return "not recorded by the dataset"
    distinct = sorted(set(map(str, _keys(groups))))
    return f"one group only ({distinct[0]})" if len(distinct) < 2 else None


def _group_rows(value_of: Callable[[str], float], attribute: str, groups: list[str]) -> list[dict]:
    """Bar-chart rows (group, acc, low, high, n) of one attribute; ``value_of(metric name)`` gives a
    metric's value (one run's, or the mean over models)."""
    return [
        {"group": group, **{key: value_of(f"{metric}/{attribute}/{group}") for key, metric in
                            (("acc", "acc"), ("low", "acc_low"), ("high", "acc_high"), ("n", "n"))}}
        for group in groups
    ]


# ----------------------------------------------------------------------------------------------
# Sweep report
# ----------------------------------------------------------------------------------------------


def report(table: TrialTable) -> Report:
    """Per-group accuracy, gaps and class-rate gaps, aggregated over the models of the sweep.

    With one model the intervals are that model's subject bootstrap CIs; with several, the cells are
    means over models and the bootstrap bounds are the means of the per-model bounds (a model-to-model
    Student-t CI of the mean is added in its own column). Parent metrics: acc_gap/<attribute>
    averaged over models.
    """
    table = table.finished()
    cfg: Settings = table.settings
    runs = table.frame()
    level = f"{cfg.confidence * 100:g} %"
    n_models = len(runs)
    groups: dict[str, set[str]] = {}
    for record in table:
        for attribute, names in json.loads(record.tags.get(TAG_GROUPS, "{}")).items():
            groups.setdefault(attribute, set()).update(names)
    attributes = [a for a in cfg.attributes if a in groups]
    lines = [
        "## Demographic bias (test split)",
        "",
        f"Models: {n_models}. Intervals: {level} subject-clustered bootstrap ({cfg.n_boot} replicates; people resampled "
        "within each group)" + (", bounds averaged over models; 'CI over models': Student t across models." if n_models > 1 else "."),
        "",
    ]
    skipped = sorted({record.tags[TAG_SKIPPED] for record in table if record.tags.get(TAG_SKIPPED, "none") != "none"})
    if skipped:
        lines += [f"Skipped attributes: {'; '.join(skipped)}.", ""]
    if not attributes:
        lines.append("No attribute with at least two groups in the test split: nothing to compare.")
        return Report("\n".join(lines) + "\n")

    bars, parent_metrics = {}, {}
    lines += ["### Accuracy per group", "", "| attribute | group | images | accuracy | bootstrap CI |" + (" CI over models |" if n_models > 1 else ""),
              "|---|---|---|---|---|" + ("---|" if n_models > 1 else "")]
    for attribute in attributes:
        bars[attribute] = _group_rows(lambda metric: _mean(runs, metric), attribute, sorted(groups[attribute]))
        for bar in bars[attribute]:
            group = bar["group"]
            row = f"| {attribute} | {group} | {bar['n']:.0f} | {bar['acc']:.3f} | {interval_text(bar['low'], bar['high'])} |"
            lines.append(row + (f" {_t_interval(runs, f'acc/{attribute}/{group}')} |" if n_models > 1 else ""))
    lines += ["", "### Gaps between groups", "",
              "| attribute | accuracy gap (best − worst) | bootstrap CI | min/max ratio | bootstrap CI | difference (first − second) | permutation p |",
              "|---|---|---|---|---|---|---|"]
    for attribute in attributes:
        gap, gap_low, gap_high = (_mean(runs, f"{k}/{attribute}") for k in ("acc_gap", "acc_gap_low", "acc_gap_high"))
        ratio, ratio_low, ratio_high = (_mean(runs, f"{k}/{attribute}") for k in ("acc_ratio", "acc_ratio_low", "acc_ratio_high"))
        diff, p_values = _column(runs, f"acc_diff/{attribute}"), _column(runs, f"p_value/{attribute}")
        diff_cell = f"{diff.mean():.3f}" if diff.notna().any() else "-"
        p_cell = ", ".join(f"{p:.3f}" for p in p_values.dropna()) or "-"
        lines.append(f"| {attribute} | {gap:.3f} | {interval_text(gap_low, gap_high)} | {ratio:.3f} | {interval_text(ratio_low, ratio_high)} | {diff_cell} | {p_cell} |")
        parent_metrics[f"acc_gap/{attribute}"] = gap
    if cfg.class_rates:
        classes = sorted({c for record in table for c in json.loads(record.tags.get(TAG_CLASSES, "[]"))})
        lines += _class_rate_table(runs, attributes, classes)
    figure = group_accuracy_figure(bars, f"Test accuracy per group ({level} subject bootstrap CI)")
    return Report("\n".join(lines) + "\n", {"bias_accuracy_by_group.png": figure}, parent_metrics)


def _class_rate_table(runs: pd.DataFrame, attributes: list[str], classes: list[str]) -> list[str]:
    lines = ["", "### Per-class gaps (recall = TPR, one-vs-rest FPR)", "",
             "| attribute | class | TPR gap | bootstrap CI | FPR gap | bootstrap CI |", "|---|---|---|---|---|---|"]
    for attribute in attributes:
        for name in classes:
            cells = []
            for rate in ("tpr", "fpr"):
                key = f"{rate}_gap/{attribute}/{name}"
                if key not in runs or runs[key].isna().all():
                    cells += ["-", "-"]
                    continue
                low, high = _mean(runs, f"{rate}_gap_low/{attribute}/{name}"), _mean(runs, f"{rate}_gap_high/{attribute}/{name}")
                cells += [f"{_mean(runs, key):.3f}", interval_text(low, high)]
            if cells != ["-"] * 4:
                lines.append(f"| {attribute} | {name} | " + " | ".join(cells) + " |")
    return lines


def _column(runs: pd.DataFrame, metric: str) -> pd.Series:
    return runs[metric].astype(float) if metric in runs else pd.Series(np.nan, index=runs.index)


def _mean(runs: pd.DataFrame, metric: str) -> float:
    values = _column(runs, metric).dropna()
    return float(values.mean()) if len(values) else float("nan")


def _t_interval(runs: pd.DataFrame, metric: str) -> str:
    summary = mean_ci(_column(runs, metric))
    return interval_text(summary["low"], summary["high"])


EXPERIMENT = Experiment(name="bias", settings=Settings, evaluates_model=True, run=run, report=report)
