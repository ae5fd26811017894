"""Gaussian noise: how accurate a trained model stays on test images with N(0, variance) noise added.

Units: images in [0,1]; the variance and sigma = sqrt(variance) are in that [0,1] pixel space
(sigma * 255 grey levels). Noisy images are clipped to [0,1].

One trial evaluates one model at every variance of ``settings.variances`` on ONE noise draw: image i
gets the unit noise of (``settings.noise_seed``, i), scaled by sigma, so the variances share their random
numbers and two models (or two trials) with the same seed see identical noise. The significance
study (sweeps/noise_sig.yaml) repeats this with distinct noise seeds, one trial per seed.

Per trial: metrics ``test_acc`` (clean, the model on the same images without noise) and
``acc_var_<v>`` for every variance; for every v > 0 the paired comparison with clean on the same
images, McNemar ``mcnemar_b_var_<v>`` (clean right, noisy wrong), ``mcnemar_c_var_<v>`` (clean wrong,
noisy right), ``mcnemar_p_var_<v>``, and the subject-clustered 95 % bootstrap interval of the
accuracy (test identities resampled with all their images) ``acc_var_<v>/subject_ci_low`` and
``/subject_ci_high``; tags ``fer_ray.sigma_var_<v>``; artifact ``noise/noise_correct.npz`` (per-image
correctness at every variance, with labels, dataset rows and identities); figure
``noise_examples.png`` (clean next to the example variances, with the model's prediction).

``report(table)`` builds the sweep's part of the report: the accuracy-vs-variance table and
curve (mean and 95 % CI over models) and, when the sweep has several noise seeds, the repeat study:
box plot, median / min / max / mean, bootstrap CI over repeats, the subject-clustered CI of one
repeat and McNemar against clean per repeat.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, field_validator

from fer_ray.core.config import Strict
from fer_ray.core.data.records import DataError
from fer_ray.core.formatting import interval_text, source_labels, summary_cell
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data, number_label
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.correctness import save_correctness
from fer_ray.experiments.results import Report, TrialTable

if TYPE_CHECKING:  # annotations only
    import pandas as pd

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
prepare = lazy_module("fer_ray.core.data.prepare")
evaluate = lazy_module("fer_ray.core.evaluate")
group_stats = lazy_module("fer_ray.core.group_stats")
plots = lazy_module("fer_ray.core.plots")
robustness = lazy_module("fer_ray.core.robustness")
robustness_plots = lazy_module("fer_ray.core.robustness_plots")
stats = lazy_module("fer_ray.core.stats")


def _check_variances(values: list[float]) -> list[float]:
    """Each noise variance a finite number >= 0 (core.robustness.variance_to_sigma's rule, which
    imports torch)."""
    for value in values:
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"noise variance must be a finite number >= 0 (in [0,1] pixel units), got {value}")
    return [float(v) for v in values]


class Settings(Strict):
    """The ``settings:`` section of a noise sweep. Variances in [0,1] pixel units (sigma = sqrt(variance))."""

    variances: list[float] = Field(
        [0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3],
        min_length=1,
        description="noise variances evaluated in one trial, each >= 0 ([0,1] pixel units)",
    )
    noise_seed: int = Field(0, ge=0, description="fixes the noise draw: the same seed gives every model identical noise")
    example_variances: list[float] = Field([0.01, 0.2], description="variances shown beside the clean images in the panel")
    n_examples: int = Field(4, ge=0, description="test images in the example panel (0: no panel)")
    n_boot: int = Field(2000, ge=1, description="resamples of the subject-clustered bootstrap CI")
    batch_size: int = Field(128, ge=1)

    @field_validator("variances", "example_variances")
    @classmethod
    def _variances_valid(cls, values: list[float]) -> list[float]:
        return _check_variances(values)


CORRECTNESS_FILE = "noise_correct.npz"
ARTIFACT_DIR = "noise"
#: The reference study's repeated-noise result (the capstone project this package grew from:
#: image-level split, ResNet-50 on KDEF), for comparison.
REFERENCE_REPEATS = {0.1: {"median": 0.67, "min": 0.65, "max": 0.68}}
REFERENCE_LABEL = "reference study (image-level split)"
SIGNIFICANCE = 0.05


variance_label = number_label  # the label of a variance in metric and tag names


def accuracy_key(variance: float) -> str:
    """Metric name of the accuracy at ``variance`` (MLflow-safe): ``acc_var_0.1``."""
    return f"acc_var_{variance_label(variance)}"


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Accuracy of ``trial.model_file`` on the test split of ``trial.data`` at every noise variance."""
    cfg = trial.settings
    model, data = load_model_and_data(trial)
    classes = data.dataset.classes
    test = data.test
    variances = sorted({0.0, *cfg.variances})
    results = robustness.noisy_accuracy(model, test.images, test.labels, variances, seed=cfg.noise_seed, batch_size=cfg.batch_size)
    identities = data.dataset.identities[test.indices].astype(str)
    clean = results[0.0]["correct"]

    metrics = {"test_acc": results[0.0]["accuracy"]}
    for variance in cfg.variances:
        correct = results[variance]["correct"]
        metrics[accuracy_key(variance)] = results[variance]["accuracy"]
        if variance > 0:
            metrics.update(_paired_metrics(variance, clean, correct, identities, cfg))
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            "fer_ray.n_test": str(len(test)),
            "fer_ray.noise_seed": str(cfg.noise_seed),
            "fer_ray.noise_units": "variance and sigma in [0,1] pixel space (sigma*255 grey levels)",
            **{f"fer_ray.sigma_var_{variance_label(v)}": f"{robustness.variance_to_sigma(v):.4g}" for v in cfg.variances},
        }
    )
    correctness = save_correctness(
        reporter.work_dir / CORRECTNESS_FILE,
        "variances",
        results,
        test,
        identities=identities.astype(str),
        noise_seed=np.int64(cfg.noise_seed),
    )
    reporter.artifact(correctness, ARTIFACT_DIR)
    if cfg.n_examples > 0 and len(test) > 0:
        reporter.figure(examples_figure(model, test, classes, cfg), "noise_examples.png")
    return metrics


def _paired_metrics(variance: float, clean: np.ndarray, noisy: np.ndarray, identities: np.ndarray, cfg: Settings) -> dict[str, float]:
    """McNemar against clean on the same images, and the subject-clustered CI of the noisy accuracy."""
    label = variance_label(variance)
    test = stats.mcnemar(clean, noisy)
    interval = subject_bootstrap_ci(noisy, identities, n_boot=cfg.n_boot, seed=cfg.noise_seed)
    return {
        f"mcnemar_b_var_{label}": float(test["b"]),
        f"mcnemar_c_var_{label}": float(test["c"]),
        f"mcnemar_p_var_{label}": test["p_value"],
        f"{accuracy_key(variance)}/subject_ci_low": interval["low"],
        f"{accuracy_key(variance)}/subject_ci_high": interval["high"],
    }


def subject_bootstrap_ci(correct: np.ndarray, identities: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """95 % CI of an accuracy over test people: fer_ray.core.group_stats.accuracy_ci (people resampled with
    all their images; expanded percentile). correct: bool (N,) per image; identities: (N,)."""
    low, high = group_stats.accuracy_ci(np.asarray(correct, dtype=bool), identities, n_boot=n_boot, seed=seed)
    return {"low": low, "high": high}


def noise_examples(images, variances: list[float], seed: int) -> dict[str, object]:
    """{column title: images}: the clean images, then each variance's noisy version (the same noise
    the accuracy was measured on: images are the first of the test split, so first_index 0)."""
    columns = {"clean": images}
    for variance in variances:
        columns[f"var {variance_label(variance)} (σ {robustness.variance_to_sigma(variance):.3g})"] = robustness.add_gaussian_noise(
            images, variance, seed
        )
    return columns


def examples_figure(model, test, classes, cfg: Settings):
    """The first ``cfg.n_examples`` test images, clean and at each example variance, each labelled
    with its true class and the model's prediction on exactly the image shown (green right, red wrong)."""
    images, labels = test.images[: cfg.n_examples], test.labels[: cfg.n_examples]
    columns = noise_examples(images, cfg.example_variances, cfg.noise_seed)
    device = next(model.parameters()).device
    predictions = {
        title: plots.prediction_labels(classes, labels, evaluate.predict_logits(model, pictures, device=device).argmax(dim=1))
        for title, pictures in columns.items()
    }
    return robustness_plots.image_panel_figure(
        columns,
        title=f"Gaussian noise (noise seed {cfg.noise_seed}; [0,1] pixel units): true / predicted class",
        predictions=predictions,
    )


# ----------------------------------------------------------------------------------------- report


def report(table: TrialTable) -> Report:
    """The noise part of the sweep report: markdown, figures and parent metrics. See module doc."""
    table = table.finished()
    variances = sorted({v for record in table for v in record.settings.variances})
    runs = table.frame(settings=("noise_seed",)).rename(columns={"noise_seed": "_seed"})
    sources = runs["source_model"].fillna("model")
    labels = source_labels(list(sources), list(runs["train_seed"]))
    runs["_model"] = sources.map(labels)
    lines = [
        "## Gaussian noise",
        "",
        "Variance and σ are in the [0,1] pixel space (σ·255 grey levels); noisy images are clipped to [0,1].",
        "",
    ]
    figures: dict[str, object] = {}
    parent_metrics: dict[str, float] = {}
    lines += ["Models: " + "; ".join(f"{label} = `{source}`" for source, label in labels.items()), ""]
    lines += _curve_section(runs, variances, figures)
    if runs["_seed"].nunique() > 1:
        for variance in (v for v in variances if v > 0):
            lines += _repeats_section(runs, variance, figures, parent_metrics, table.settings)
    lines += _examples_section(table, figures)
    return Report("\n".join(lines) + "\n", figures, parent_metrics)


def _curve_section(runs: pd.DataFrame, variances: list[float], figures: dict) -> list[str]:
    """Accuracy at every variance: mean over models (each model's repeats averaged first) [t CI]."""
    lines = [
        "### Accuracy vs noise variance",
        "",
        "Cells: mean over models [95 % CI over models (training seeds) on the same test images, Student t clipped"
        " to [0, 1]; '-' with one model]; a model's repeats"
        " (noise seeds) are averaged first. McNemar: paired test against clean accuracy on the same"
        " images, largest p over all runs.",
        "",
        "| variance | σ | σ·255 | accuracy | models | McNemar p vs clean (max) |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for variance in variances:
        per_model = runs.groupby("_model", sort=False)[accuracy_key(variance)].mean()
        summary = stats.mean_ci(per_model, bounds=stats.ACCURACY_BOUNDS)
        p_column = f"mcnemar_p_var_{variance_label(variance)}"
        p_max = runs[p_column].max() if p_column in runs else float("nan")
        sigma = robustness.variance_to_sigma(variance)
        rows.append((variance, summary))
        lines.append(
            f"| {variance_label(variance)} | {sigma:.4g} | {sigma * 255:.3g} | {summary_cell(summary)} | {summary['n']} | "
            f"{'-' if math.isnan(p_max) else f'{p_max:.3g}'} |"
        )
    if len(variances) > 1:
        figures["accuracy_vs_variance.png"] = robustness_plots.accuracy_curve_figure(
            [v for v, _ in rows],
            [s["mean"] for _, s in rows],
            [s["low"] for _, s in rows],
            [s["high"] for _, s in rows],
            xlabel="noise variance ([0,1] pixel units)",
            title="Accuracy vs Gaussian noise variance",
        )
    return lines + [""]


def _repeats_section(runs: pd.DataFrame, variance: float, figures: dict, parent_metrics: dict, settings: Settings) -> list[str]:
    """The significance study at one variance: the spread over noise repeats and the paired tests."""
    key, label = accuracy_key(variance), variance_label(variance)
    n_boot = settings.n_boot
    lines = [
        f"### Repeats at variance {label} (σ {robustness.variance_to_sigma(variance):.4g})",
        "",
        "Each repeat is one trial with its own noise seed, on the same test images. Bootstrap CI: 95 %,"
        " percentile, over repeats. Subject CI: 95 % cluster bootstrap over test identities within one"
        " repeat (the first noise seed).",
        "",
        "| model | repeats | median | min | max | mean | median 95 % CI | mean 95 % CI | clean | subject CI (one repeat) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    values = {}
    for model, group in runs.sort_values("_seed").groupby("_model", sort=False):
        accuracies = group[key].astype(float).to_numpy()
        values[model] = accuracies
        median, mean = stats.bootstrap_ci(accuracies, np.median, n_boot=n_boot), stats.bootstrap_ci(accuracies, np.mean, n_boot=n_boot)
        first = group.iloc[0]
        subject = (first.get(f"{key}/subject_ci_low", np.nan), first.get(f"{key}/subject_ci_high", np.nan))
        lines.append(
            f"| {model} | {len(accuracies)} | {np.median(accuracies):.3f} | {accuracies.min():.3f} | {accuracies.max():.3f} | "
            f"{accuracies.mean():.3f} | {_interval(median)} | {_interval(mean)} | {group['test_acc'].mean():.3f} | "
            f"{_interval({'low': subject[0], 'high': subject[1]})} (seed {int(first['_seed'])}) |"
        )
    pooled = np.concatenate(list(values.values()))
    if len(values) > 1:  # the parent run's summary metrics pool every model's repeats (no CI: not i.i.d.)
        lines.append(
            f"| all models | {len(pooled)} | {np.median(pooled):.3f} | {pooled.min():.3f} | {pooled.max():.3f} | "
            f"{pooled.mean():.3f} | - | - | {runs['test_acc'].mean():.3f} | - |"
        )
    parent_metrics.update(
        {
            f"median_{key}": float(np.median(pooled)),
            f"min_{key}": float(pooled.min()),
            f"max_{key}": float(pooled.max()),
            f"mean_{key}": float(pooled.mean()),
        }
    )
    reference = REFERENCE_REPEATS.get(variance)
    if reference:
        lines += [
            "",
            f"{REFERENCE_LABEL}: median {reference['median']}, min {reference['min']}, max {reference['max']} — not comparable one to one (their split let the same people into train and test).",
        ]
    name = f"repeats_var_{label}.png"
    figures[name] = robustness_plots.repeats_boxplot_figure(
        values,
        ylabel=f"test accuracy at variance {label}",
        title=f"Accuracy over noise repeats (variance {label})",
        reference=reference,
        reference_label=REFERENCE_LABEL,
    )
    return lines + [""] + _mcnemar_lines(runs, label) + [""]


def _mcnemar_lines(runs: pd.DataFrame, label: str) -> list[str]:
    """McNemar against clean per repeat, and how many repeats reject 'noise changes nothing'."""
    columns = [f"mcnemar_{part}_var_{label}" for part in ("b", "c", "p")]
    if any(column not in runs for column in columns):
        return []
    b, c, p = columns
    lines = [
        f"McNemar, clean vs variance {label} on the same images (b: clean right & noisy wrong; c: the reverse;"
        " exact binomial test below 25 discordant images, else chi-square with continuity correction):",
        "",
        "| model | noise seed | clean | noisy | b | c | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in runs.sort_values(["_model", "_seed"]).iterrows():
        lines.append(
            f"| {row['_model']} | {int(row['_seed'])} | {row['test_acc']:.3f} | {row[f'acc_var_{label}']:.3f} | "
            f"{int(row[b])} | {int(row[c])} | {row[p]:.3g} |"
        )
    significant = int((runs[p] < SIGNIFICANCE).sum())
    lines += [
        "",
        f"Summary: p < {SIGNIFICANCE} in {significant} of {len(runs)} repeats; median p {runs[p].median():.3g}, largest p {runs[p].max():.3g}.",
    ]
    return lines


def _examples_section(table: TrialTable, figures: dict) -> list[str]:
    """The example panel (clean / example variances), redrawn from the data on the driver."""
    cfg: Settings = table.settings
    if cfg.n_examples == 0 or not cfg.example_variances:
        return []
    try:
        data = prepare.prepare_data(table.data)
    except DataError as error:
        return [f"(No example panel: the data is not readable where the report is written: {error})", ""]
    test = data.test
    columns = noise_examples(test.images[: cfg.n_examples], cfg.example_variances, cfg.noise_seed)
    classes = data.dataset.classes
    true = [f"true {classes[int(label)]}" for label in test.labels[: cfg.n_examples]]
    figures["noise_examples.png"] = robustness_plots.image_panel_figure(
        columns, row_labels=true, title=f"Gaussian noise examples (noise seed {cfg.noise_seed})"
    )
    return ["### Examples", "", "Each trial also logs its own panel labelled with the model's predictions (noise_examples.png).", ""]


def _interval(summary: dict) -> str:
    return interval_text(summary["low"], summary["high"])


EXPERIMENT = Experiment(
    name="noise",
    settings=Settings,
    evaluates_model=True,
    run=run,
    report=report,
    summary_metrics=("acc_var_*", "test_acc"),
)
