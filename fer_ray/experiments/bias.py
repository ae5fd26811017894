"""Demographic bias: how a trained model's test results differ between groups of people.

For every group attribute the dataset records (gender on KDEF and the synthetic faces, race and
gender on RADIATE, camera angle on KDEF) and that has at least two groups in the test split, per
group: accuracy with a subject-clustered bootstrap CI, and per class the recall (TPR) and the
one-vs-rest false-positive rate (FPR). Across groups, what can be tested: the SIGNED difference of
each group from a stated reference group (``settings.reference``; default angle S and gender M
where present, else the group with the most people), e.g. ``acc_diff/gender/F`` = acc(F) - acc(M), with a subject-clustered CI, a subject-level
permutation p and its Holm-adjusted value, and an omnibus permutation test of "no group differs"
(fer_ray.core.group_stats.compare_groups); per class the same for TPR and FPR. Uncertainty is over
SUBJECTS (identities), since a person's images are not independent; people seen in several groups
(angle, session) are compared within themselves.

Metric names (``<a>`` attribute, ``<g>`` group, ``<c>`` class; a rate a group cannot have, e.g. the
TPR of a class it has no image of, is left out):
  n/<a>/<g>, people/<a>/<g>, acc/<a>/<g>, acc_low/<a>/<g>, acc_high/<a>/<g>, tpr/<a>/<g>/<c>,
  fpr/<a>/<g>/<c>; for every group but the reference: acc_diff/<a>/<g> (+ _low, _high),
  p_value/<a>/<g>, p_holm/<a>/<g>; p_omnibus/<a>; per class tpr_diff/<a>/<g>/<c> (+ _low, _high),
  tpr_p_holm/<a>/<g>/<c>, tpr_p_omnibus/<a>/<c> and the same for fpr; and test_acc, n_test.
Tags: ``fer_ray.bias_reference`` (JSON {attribute: reference group}), ``fer_ray.bias_design`` (JSON
{attribute: between | within | mixed}). Attributes with a single group (e.g. angle when only
straight-on images are used) are skipped and named in the tag ``fer_ray.bias_skipped`` and in the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from fer_ray.core.config import Strict
from fer_ray.core.formatting import interval_text
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
evaluate = lazy_module("fer_ray.core.evaluate")
group_plots = lazy_module("fer_ray.core.group_plots")
group_stats = lazy_module("fer_ray.core.group_stats")
stats = lazy_module("fer_ray.core.stats")


#: the group attributes a bias sweep studies by default, in report order
DEFAULT_ATTRIBUTES: tuple[str, ...] = ("gender", "race", "angle")


class Settings(Strict):
    """The ``settings:`` section of a bias sweep."""

    attributes: list[Literal["gender", "race", "angle", "session"]] = Field(
        list(DEFAULT_ATTRIBUTES), min_length=1, description="group attributes to study (those the dataset lacks are skipped)"
    )
    reference: dict[str, str] = Field(
        {},
        description="reference group per attribute, e.g. {race: White}; differences are group - reference "
        "(default: angle S, gender M when present, else the group with the most people)",
    )
    n_boot: int = Field(1000, ge=50, description="bootstrap replicates (subjects resampled within groups)")
    n_perm: int = Field(2000, ge=50, description="permutations of each subject-level test")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    class_rates: bool = Field(True, description="per-class TPR / FPR per group and their gaps")
    seed: int = Field(0, description="seed of the bootstrap and the permutations")

    @field_validator("attributes")
    @classmethod
    def _no_repeats(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"attributes must not repeat, got {values}")
        return values


TAG_STUDIED = "fer_ray.bias_attributes"
TAG_SKIPPED = "fer_ray.bias_skipped"
TAG_REFERENCE = "fer_ray.bias_reference"
#: reference groups used when settings.reference does not name one and the group is in the test split:
#: straight-on faces for angle, M for gender (so the difference reads F - M)
PREFERRED_REFERENCES = {"angle": "S", "gender": "M"}
TAG_DESIGN = "fer_ray.bias_design"
#: JSON {attribute: [group, ...]}: the groups of each studied attribute, as they appear in metric names
TAG_GROUPS = "fer_ray.bias_groups"
#: JSON [class, ...]: the class names of the per-class rate metrics
TAG_CLASSES = "fer_ray.bias_classes"
#: how the report words each design
DESIGN_WORDS = {
    "between": "each person in one group",
    "within": "people seen in every group, compared within themselves",
    "mixed": "some people in several groups",
}
_UNSAFE_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. :]")


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Per-group test results of trial.model_file for every studied attribute (see module docstring)."""
    cfg: Settings = trial.settings
    model, data = load_model_and_data(trial)
    y_true = data.test.labels.numpy()
    y_pred = evaluate.predict_proba(model, data.test.images).argmax(dim=1).numpy()
    subjects = data.dataset.identities[data.test.indices]
    metrics = {"test_acc": float(np.mean(y_true == y_pred)), "n_test": float(len(y_true))}
    studied, skipped, references, designs, group_names = [], {}, {}, {}, {}
    for attribute in cfg.attributes:
        groups = data.dataset.attribute(attribute)[data.test.indices]
        reason = _skip_reason(groups)
        if reason:
            skipped[attribute] = reason
            continue
        attribute_values, comparison = attribute_metrics(attribute, y_true, y_pred, groups, subjects, data.dataset.classes, cfg)
        metrics.update(attribute_values)
        studied.append(attribute)
        references[attribute], designs[attribute] = metric_part(comparison["reference"]), comparison["design"]
        group_names[attribute] = [metric_part(row["group"]) for row in comparison["groups"]]
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            TAG_STUDIED: ",".join(studied) or "none",
            TAG_SKIPPED: "; ".join(f"{a}: {why}" for a, why in skipped.items()) or "none",
            TAG_REFERENCE: json.dumps(references),
            TAG_DESIGN: json.dumps(designs),
            TAG_GROUPS: json.dumps(group_names),
            TAG_CLASSES: json.dumps([metric_part(c) for c in data.dataset.classes]),
        }
    )
    if studied:
        bars = {a: _group_rows(metrics.__getitem__, a, group_names[a]) for a in studied}
        reporter.figure(
            group_plots.group_accuracy_figure(
                bars, f"{trial.sweep}: test accuracy per group ({cfg.confidence * 100:g} % subject bootstrap CI)"
            ),
            "bias_accuracy.png",
        )
    return {name: value for name, value in metrics.items() if np.isfinite(value)}


def attribute_metrics(attribute: str, y_true, y_pred, groups, subjects, classes, cfg: Settings) -> tuple[dict[str, float], dict]:
    """The metrics of one attribute (names in the module docstring; NaN where undefined), and the
    accuracy comparison they came from (fer_ray.core.group_stats.compare_groups' dict).

    y_true, y_pred: int (N,) class indices; groups: (N,) values of ``attribute`` (None -> "unknown");
    subjects: (N,) identities.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    groups, subjects = np.asarray(_keys(groups), dtype=object), np.asarray(subjects)
    options = {
        "reference": _reference(cfg, attribute, groups),
        "n_boot": cfg.n_boot,
        "n_perm": cfg.n_perm,
        "seed": cfg.seed,
        "confidence": cfg.confidence,
    }
    rates = group_stats.group_rates(y_true, y_pred, groups, classes)
    comparison = group_stats.compare_groups(y_true == y_pred, groups, subjects, **options)
    metrics: dict[str, float] = {f"p_omnibus/{attribute}": comparison["omnibus_p"]}
    for row in comparison["groups"]:
        name = f"{attribute}/{metric_part(row['group'])}"
        metrics.update(
            {
                f"n/{name}": float(row["n_images"]),
                f"people/{name}": float(row["n_subjects"]),
                f"acc/{name}": row["rate"],
                f"acc_low/{name}": row["low"],
                f"acc_high/{name}": row["high"],
            }
        )
        if cfg.class_rates:
            metrics.update({f"{rate}/{name}/{metric_part(c)}": rates[row["group"]][rate][c] for rate in ("tpr", "fpr") for c in classes})
    metrics.update(_difference_metrics("acc", attribute, "", comparison))
    if cfg.class_rates:
        for index, name in enumerate(classes):
            for rate in ("tpr", "fpr"):
                rows, successes = group_stats.rate_outcomes(y_true, y_pred, rate, index)
                if len(set(groups[rows].tolist())) != len(comparison["groups"]):  # a group has no image to measure it on
                    continue
                per_class = group_stats.compare_groups(successes, groups[rows], subjects[rows], **options)
                metrics[f"{rate}_p_omnibus/{attribute}/{metric_part(name)}"] = per_class["omnibus_p"]
                metrics.update(_difference_metrics(rate, attribute, f"/{metric_part(name)}", per_class))
    return metrics, comparison


def _difference_metrics(rate: str, attribute: str, suffix: str, comparison: dict) -> dict[str, float]:
    """<rate>_diff/<a>/<g><suffix> (+ _low, _high) and the p-values of each group against the reference."""
    p_names = ("p_value", "p_holm") if rate == "acc" else (f"{rate}_p_value", f"{rate}_p_holm")
    metrics = {}
    for row in comparison["differences"]:
        name = f"{attribute}/{metric_part(row['group'])}{suffix}"
        metrics.update(
            {
                f"{rate}_diff/{name}": row["diff"],
                f"{rate}_diff_low/{name}": row["low"],
                f"{rate}_diff_high/{name}": row["high"],
                f"{p_names[0]}/{name}": row["p_value"],
                f"{p_names[1]}/{name}": row["p_holm"],
            }
        )
    return metrics


def _reference(cfg: Settings, attribute: str, groups: np.ndarray):
    """The reference group of ``attribute`` as it appears in ``groups``: the configured one, else the
    conventional one when present (PREFERRED_REFERENCES), else None (compare_groups' default)."""
    wanted = cfg.reference.get(attribute)
    if wanted is None:
        preferred = PREFERRED_REFERENCES.get(attribute)
        return preferred if preferred in set(groups.tolist()) else None
    present = sorted({str(g) for g in groups})
    matches = [g for g in set(groups.tolist()) if str(g) == wanted]
    if not matches:
        raise group_stats.GroupStatsError(f"settings.reference.{attribute}={wanted!r} is not a group of the test split; groups: {present}")
    return matches[0]


def metric_part(value) -> str:
    """A group value as one segment of an MLflow metric name ('/' and other unsafe characters -> '_')."""
    return _UNSAFE_METRIC_CHARS.sub("_", str(value)) or "_"


# ----------------------------------------------------------------------------------------------


def _keys(groups) -> list:
    return [evaluate.UNKNOWN_GROUP if g is None else g for g in groups]


def _skip_reason(groups) -> str | None:
    """Why an attribute cannot be compared across groups in this test split, or None."""
    if all(g is None for g in groups):
        return "not recorded by the dataset"
    distinct = sorted(set(map(str, _keys(groups))))
    return f"one group only ({distinct[0]})" if len(distinct) < 2 else None


def _group_rows(value_of, attribute: str, groups: list[str]) -> list[dict]:
    """Bar-chart rows (group, acc, low, high, n) of one attribute; ``value_of(metric name)`` gives a
    metric's value."""
    return [
        {
            "group": group,
            **{
                key: value_of(f"{metric}/{attribute}/{group}")
                for key, metric in (("acc", "acc"), ("low", "acc_low"), ("high", "acc_high"), ("n", "n"))
            },
        }
        for group in groups
    ]


# ----------------------------------------------------------------------------------------------
# Sweep report
# ----------------------------------------------------------------------------------------------


def report(table: TrialTable) -> Report:
    """The sweep's bias report from its finished trials (one per model); see ``summarise``."""
    table = table.finished()
    markdown, figures, metrics = summarise([dict(r.metrics) for r in table], [dict(r.tags) for r in table], table.settings)
    return Report(markdown, figures, metrics)


def summarise(models: Sequence[dict[str, float]], tags: Sequence[dict[str, str]], cfg: Settings) -> tuple[str, dict, dict]:
    """Per-group accuracy, signed differences from the reference group and their tests, per attribute.

    models: each model's run metrics (names as in the module docstring); tags: each run's tags.
    One model: its subject-clustered CIs and subject-level p-values. Several (models trained with
    different seeds): cells are means over models with a Student-t CI over models (clipped to the
    quantity's range), and the per-model p-values are listed. Returns (markdown, figures, parent
    metrics: acc_diff/<a>/<g> averaged over models, p_omnibus/<a> with one model).
    """
    level = f"{cfg.confidence * 100:g} %"
    references = _merged_json(tags, TAG_REFERENCE)
    designs = _merged_json(tags, TAG_DESIGN)
    attributes = [a for a in cfg.attributes if a in references]
    one = len(models) == 1
    covers = (
        f"{level} intervals {group_stats.COMPARISON_COVERS} ({cfg.n_boot} replicates, {cfg.n_perm} permutations)"
        if one
        else f"cells: means over the {len(models)} models; {level} intervals {stats.SEEDS_COVER}; p-values: one per model, subject-level permutation"
    )
    lines = [
        "## Demographic bias (test split)",
        "",
        f"Models: {len(models)}. {covers[0].upper()}{covers[1:]}.",
        "Differences are signed, group − reference; p (Holm): adjusted over the differences of one attribute.",
        "",
    ]
    skipped = sorted({t.get(TAG_SKIPPED, "none") for t in tags} - {"none"})
    if skipped:
        lines += [f"Skipped attributes: {'; '.join(skipped)}.", ""]
    if not attributes:
        lines.append("No attribute with at least two groups in the test split: nothing to compare.")
        return "\n".join(lines) + "\n", {}, {}

    bars, parent_metrics = {}, {}
    for attribute in attributes:
        reference = references[attribute]
        groups = sorted(set().union(*(json.loads(t.get(TAG_GROUPS) or "{}").get(attribute, []) for t in tags)))
        omnibus = _values(models, f"p_omnibus/{attribute}")
        lines += [
            f"### {attribute}: reference {reference} ({DESIGN_WORDS.get(designs.get(attribute, ''), 'design unknown')}); "
            f"omnibus p (no group differs) = {_p_cell(omnibus)}",
            "",
            f"| group | people | images | accuracy | {level} CI | difference vs {reference} | {level} CI | p | p (Holm) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        bars[attribute] = []
        for group in groups:
            name = f"{attribute}/{group}"
            acc = _cell(models, name, "acc", (0.0, 1.0))
            bars[attribute].append({"group": group, "acc": acc[0], "low": acc[1], "high": acc[2], "n": _mean(_values(models, f"n/{name}"))})
            if group == reference:
                diff_cells = "(reference) | | | |"
            else:
                diff = _cell(models, name, "acc_diff", (-1.0, 1.0))
                diff_cells = (
                    f"{diff[0]:+.3f} | {_interval(diff[1], diff[2])} | {_p_cell(_values(models, f'p_value/{name}'))} | "
                    f"{_p_cell(_values(models, f'p_holm/{name}'))} |"
                )
                parent_metrics[f"acc_diff/{name}"] = diff[0]
            lines.append(
                f"| {group} | {_mean(_values(models, f'people/{name}')):.0f} | {_mean(_values(models, f'n/{name}')):.0f} | "
                f"{acc[0]:.3f} | {_interval(acc[1], acc[2])} | {diff_cells}"
            )
        if one and omnibus:
            parent_metrics[f"p_omnibus/{attribute}"] = omnibus[0]
        lines.append("")
        if cfg.class_rates:
            classes = sorted(set().union(*(json.loads(t.get(TAG_CLASSES) or "[]") for t in tags)))
            lines += _class_rate_lines(models, attribute, reference, groups, classes, level)
    figure = group_plots.group_accuracy_figure(bars, f"Test accuracy per group ({level} CI {'over test people' if one else 'over models'})")
    return "\n".join(lines) + "\n", {"bias_accuracy_by_group.png": figure}, parent_metrics


def _class_rate_lines(
    models: Sequence[dict[str, float]], attribute: str, reference: str, groups: list[str], classes: list[str], level: str
) -> list[str]:
    """Per class: TPR and FPR differences of each group from the reference, with CI and Holm p."""
    rows = []
    for name in classes:
        for group in (g for g in groups if g != reference):
            cells = []
            for rate in ("tpr", "fpr"):
                key = f"{attribute}/{group}/{name}"
                if not _values(models, f"{rate}_diff/{key}"):
                    cells += ["-", "-", "-"]
                    continue
                diff = _cell(models, key, f"{rate}_diff", (-1.0, 1.0))
                cells += [f"{diff[0]:+.3f}", _interval(diff[1], diff[2]), _p_cell(_values(models, f"{rate}_p_holm/{key}"))]
            rows.append(f"| {name} | {group} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        f"Per class, {attribute} (recall = TPR, one-vs-rest FPR; group − {reference}; p (Holm) over the groups of one class "
        "and rate, not across classes):",
        "",
        f"| class | group | TPR difference | {level} CI | p (Holm) | FPR difference | {level} CI | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _cell(models: Sequence[dict[str, float]], name: str, metric: str, bounds: tuple[float, float]) -> tuple[float, float, float]:
    """(estimate, low, high) of ``metric/name``: one model -> its own subject-clustered interval; several
    -> the mean over models and the Student-t interval over models, within ``bounds``."""
    values = _values(models, f"{metric}/{name}")
    if len(models) == 1:
        low, high = _values(models, f"{metric}_low/{name}"), _values(models, f"{metric}_high/{name}")
        return _mean(values), _mean(low), _mean(high)
    summary = stats.mean_ci(values, bounds=bounds)
    return summary["mean"], summary["low"], summary["high"]


def _values(models: Sequence[dict[str, float]], metric: str) -> list[float]:
    return [m[metric] for m in models if metric in m and np.isfinite(m[metric])]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _interval(low: float, high: float) -> str:
    return interval_text(low, high)


def _p_cell(values: list[float]) -> str:
    return ", ".join(f"{p:.3g}" for p in values) or "-"


def _merged_json(tags: Sequence[dict[str, str]], key: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for run_tags in tags:
        merged.update(json.loads(run_tags.get(key) or "{}"))
    return merged


EXPERIMENT = Experiment(
    name="bias",
    settings=Settings,
    evaluates_model=True,
    run=run,
    report=report,
    summary_metrics=("test_acc", "acc_diff/*/*"),
)
