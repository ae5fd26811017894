"""Adversarial robustness: accuracy of a trained model under FGSM (or PGD) at a range of epsilons.

Units: images in [0,1]; epsilon is the L-infinity radius in that [0,1] pixel space (epsilon * 255
grey levels: 0.01 is 2.55 levels). FGSM takes one gradient per batch and serves every epsilon from
it (fer_ray.core.robustness.fgsm_accuracy); PGD (``settings.attack: pgd``) runs ``pgd_steps`` signed
steps per epsilon, projected on the epsilon-ball and [0,1].

Per trial: metrics ``test_acc`` (clean: epsilon 0 on the same images) and ``acc_eps_<e>`` for every
epsilon of ``settings.epsilons`` and ``settings.panel_epsilons``; tags ``fer_ray.attack`` and
``fer_ray.eps255_<e>`` (epsilon in grey levels); artifact ``attack/attack_correct.npz`` (per-image
correctness at every epsilon, with labels and dataset rows, for paired tests later); figures
``adversarial_panel.png`` (the first test images at each panel epsilon with the model's top-3 class
probabilities, the reference study's figure) and ``accuracy_vs_epsilon.png``.

``report(table)``: the accuracy table (attack, epsilon, epsilon * 255, mean [95 % CI over
models], the reference study's number) and curve.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from fer_ray.core.config import Strict
from fer_ray.core.formatting import summary_cell
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data, number_label
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.correctness import save_correctness
from fer_ray.experiments.results import Report, TrialTable

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
plots = lazy_module("fer_ray.core.plots")
robustness = lazy_module("fer_ray.core.robustness")
robustness_plots = lazy_module("fer_ray.core.robustness_plots")
stats = lazy_module("fer_ray.core.stats")


def _check_epsilons(values: list[float]) -> list[float]:
    for value in values:
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"epsilon {value} is outside [0, 1]: epsilon is in the [0,1] pixel space "
                f"(epsilon * 255 = {value * 255:g} grey levels; 0.01 = 2.55 levels)"
            )
    return [float(v) for v in values]


class Settings(Strict):
    """The ``settings:`` section of an attack sweep. Epsilons in [0,1] pixel units (x255 = grey levels)."""

    epsilons: list[float] = Field(
        [0.0, 0.001, 0.005, 0.007, 0.01, 0.05, 0.07, 0.1],
        min_length=1,
        description="attack radii evaluated in one trial, each in [0, 1]",
    )
    panel_epsilons: list[float] = Field([0.0, 0.01, 0.3], description="epsilons shown in the example panel (also scored)")
    attack: Literal["fgsm", "pgd"] = "fgsm"
    pgd_steps: int = Field(10, ge=1, description="attack: pgd: signed gradient steps per epsilon")
    pgd_step_size: float | None = Field(None, gt=0, description="pgd: step in [0,1] units (default 2.5 * epsilon / steps)")
    pgd_random_start: bool = Field(False, description="pgd: start from a seeded uniform point of the epsilon-ball")
    n_panel_images: int = Field(4, ge=0, description="test images in the panel (0: no panel)")
    batch_size: int = Field(128, ge=1)

    @field_validator("epsilons", "panel_epsilons")
    @classmethod
    def _epsilons_valid(cls, values: list[float]) -> list[float]:
        return _check_epsilons(values)


CORRECTNESS_FILE = "attack_correct.npz"
ARTIFACT_DIR = "attack"
#: The reference study's FGSM accuracies (the capstone project this package grew from: image-level
#: split, ResNet-50 on KDEF), for comparison.
REFERENCE_FGSM = {0.001: 0.82, 0.005: 0.61, 0.007: 0.50, 0.01: 0.38, 0.05: 0.057, 0.07: 0.053, 0.1: 0.047}
REFERENCE_LABEL = "reference study FGSM (image-level split)"


epsilon_label = number_label  # the label of an epsilon in metric and tag names


def accuracy_key(epsilon: float) -> str:
    """Metric name of the accuracy at ``epsilon`` (MLflow-safe): ``acc_eps_0.01``."""
    return f"acc_eps_{epsilon_label(epsilon)}"


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Accuracy of ``trial.model_file`` on the test split of ``trial.data`` under the attack at every epsilon."""
    cfg = trial.settings
    model, data = load_model_and_data(trial)
    classes = data.dataset.classes
    test = data.test
    epsilons = sorted({0.0, *cfg.epsilons, *cfg.panel_epsilons})
    results = attack_accuracy(model, test.images, test.labels, epsilons, cfg)

    metrics = {"test_acc": results[0.0]["accuracy"]}
    metrics.update({accuracy_key(e): results[e]["accuracy"] for e in sorted({*cfg.epsilons, *cfg.panel_epsilons})})
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            "fer_ray.n_test": str(len(test)),
            "fer_ray.attack": cfg.attack if cfg.attack == "fgsm" else f"pgd ({cfg.pgd_steps} steps)",
            "fer_ray.epsilon_units": "[0,1] pixel space; eps255 = epsilon * 255 grey levels",
            **{f"fer_ray.eps255_{epsilon_label(e)}": f"{e * 255:.4g}" for e in epsilons},
        }
    )
    reporter.artifact(save_correctness(reporter.work_dir / CORRECTNESS_FILE, "epsilons", results, test), ARTIFACT_DIR)
    if cfg.n_panel_images > 0 and len(test) > 0 and cfg.panel_epsilons:
        reporter.figure(panel_figure(results, cfg.panel_epsilons, test.labels, classes, cfg.attack), "adversarial_panel.png")
    scored = sorted({*cfg.epsilons, *cfg.panel_epsilons})
    reporter.figure(
        robustness_plots.accuracy_curve_figure(
            scored,
            [results[e]["accuracy"] for e in scored],
            [math.nan] * len(scored),
            [math.nan] * len(scored),
            xlabel="epsilon ([0,1] pixel units)",
            title=f"Accuracy under {cfg.attack.upper()}",
            reference=REFERENCE_FGSM if cfg.attack == "fgsm" else None,
            reference_label=REFERENCE_LABEL,
            line_label="this model",
        ),
        "accuracy_vs_epsilon.png",
    )
    return metrics


def attack_accuracy(model, images, labels, epsilons: list[float], cfg: Settings) -> dict[float, dict]:
    """fgsm_accuracy or pgd_accuracy per cfg.attack, with the panel's first images kept."""
    if cfg.attack == "fgsm":
        return robustness.fgsm_accuracy(model, images, labels, epsilons, batch_size=cfg.batch_size, return_examples=cfg.n_panel_images)
    return robustness.pgd_accuracy(
        model,
        images,
        labels,
        epsilons,
        steps=cfg.pgd_steps,
        step_size=cfg.pgd_step_size,
        random_start=cfg.pgd_random_start,
        batch_size=cfg.batch_size,
        return_examples=cfg.n_panel_images,
    )


def panel_figure(results: dict[float, dict], panel_epsilons: list[float], labels, classes, attack: str):
    """The reference study's figure: the first test images at each panel epsilon, each labelled with
    its true and predicted class (green right, red wrong) above and its top-3 classes below."""
    columns, captions, predictions = {}, {}, {}
    for epsilon in panel_epsilons:
        entry = results[epsilon]
        title = "original (ε 0)" if epsilon == 0 else f"ε {epsilon_label(epsilon)} ({epsilon * 255:.3g}/255)"
        columns[title] = entry["examples"]
        captions[title] = [robustness_plots.top_k_caption(classes, c, p) for c, p in zip(entry["top3_classes"], entry["top3_probs"])]
        shown = len(entry["examples"])
        predictions[title] = plots.prediction_labels(classes, labels[:shown], [int(top[0]) for top in entry["top3_classes"]])
    return robustness_plots.image_panel_figure(
        columns,
        captions,
        title=f"{attack.upper()} examples: true / predicted class, top-3 class probabilities",
        predictions=predictions,
    )


# ----------------------------------------------------------------------------------------- report


def scored_epsilons(settings: Settings) -> list[float]:
    """The epsilons a trial with these settings reports an accuracy for (``accuracy_key``), ascending."""
    return sorted({*settings.epsilons, *settings.panel_epsilons})


def report(table: TrialTable) -> Report:
    """The attack part of the sweep report: the accuracy table per attack and epsilon (mean over
    models [95 % CI]) beside the reference study's numbers, one curve per attack, and the mean
    accuracy per epsilon as parent metrics."""
    table = table.finished()
    epsilons = sorted({e for record in table for e in scored_epsilons(record.settings)})
    runs = table.frame(settings=("attack",))
    runs["source_model"] = runs["source_model"].fillna("model")
    lines = [
        "## Adversarial attack",
        "",
        "ε is the L∞ radius in the [0,1] pixel space (ε·255 grey levels). Cells: mean over models"
        " [95 % CI over models (training seeds) on the same test images, Student t clipped to [0, 1]; '-' with one model].",
        "",
        f"| attack | ε | ε·255 | accuracy | models | {REFERENCE_LABEL} |",
        "|---|---|---|---|---|---|",
    ]
    figures, parent_metrics = {}, {}
    for attack, group in runs.groupby("attack", sort=True):
        curve = []
        for epsilon in epsilons:
            column = accuracy_key(epsilon)
            if column not in group:
                continue
            per_model = group.groupby("source_model", sort=False)[column].mean().dropna()
            if per_model.empty:
                continue
            summary = stats.mean_ci(per_model, bounds=stats.ACCURACY_BOUNDS)
            curve.append((epsilon, summary))
            parent_metrics[f"mean_{accuracy_key(epsilon)}" + ("" if attack == "fgsm" else f"/{attack}")] = summary["mean"]
            reference = REFERENCE_FGSM.get(epsilon) if attack == "fgsm" else None
            lines.append(
                f"| {attack} | {epsilon_label(epsilon)} | {epsilon * 255:.4g} | {summary_cell(summary)} | {summary['n']} | "
                f"{'-' if reference is None else reference} |"
            )
        if len(curve) > 1:
            figures[f"accuracy_vs_epsilon_{attack}.png"] = robustness_plots.accuracy_curve_figure(
                [e for e, _ in curve],
                [s["mean"] for _, s in curve],
                [s["low"] for _, s in curve],
                [s["high"] for _, s in curve],
                xlabel="epsilon ([0,1] pixel units)",
                title=f"Accuracy under {attack.upper()}",
                reference=REFERENCE_FGSM if attack == "fgsm" else None,
                reference_label=REFERENCE_LABEL,
            )
    lines += ["", "Each trial logs its adversarial_panel.png (the reference study's figure: top-3 class probabilities per ε)."]
    return Report("\n".join(lines) + "\n", figures, parent_metrics)


EXPERIMENT = Experiment(name="fgsm", settings=Settings, evaluates_model=True, run=run, report=report, summary_metrics=("acc_eps_*",))
