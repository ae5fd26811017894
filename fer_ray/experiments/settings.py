"""The settings model of every experiment (the ``settings:`` section of its sweep files) and whether it
evaluates a trained model: what a sweep file needs to validate, without importing the experiment
itself (its science stack: torch, torchvision, scikit-learn, matplotlib: seconds). ``--dry-run`` and
every spec error answer from here. Each experiment module uses its model as its ``Settings``, and
``get_experiment`` checks that its Experiment agrees with these tables.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fer_ray.core.config import GeneratorConfig, Strict

#: the group attributes a bias sweep studies by default, in report order
DEFAULT_ATTRIBUTES: tuple[str, ...] = ("gender", "race", "angle")


def _check_epsilons(values: list[float]) -> list[float]:
    for value in values:
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"epsilon {value} is outside [0, 1]: epsilon is in the [0,1] pixel space "
                f"(epsilon * 255 = {value * 255:g} grey levels; 0.01 = 2.55 levels)"
            )
    return [float(v) for v in values]


def _check_variances(values: list[float]) -> list[float]:
    """Each noise variance a finite number >= 0 (core.robustness.variance_to_sigma's rule, which
    imports torch)."""
    for value in values:
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"noise variance must be a finite number >= 0 (in [0,1] pixel units), got {value}")
    return [float(v) for v in values]


class FinetuneSettings(Strict):
    """What the fine-tuning trial produces besides its metrics."""

    confusion_matrix: bool = Field(True, description="log the test confusion matrix PNG")
    save_model: bool = Field(True, description="log the trained model file (needed by evaluation sweeps)")


class EvaluateSettings(Strict):
    confusion_matrix: bool = Field(True, description="log the test confusion matrix PNG")


class ProbeSettings(Strict):
    steps: int = Field(3, ge=1, le=1000, description="instant 'epochs' reported per trial")
    checkpoint: bool = Field(True, description="write a tiny checkpoint each step (exercises Tune storage)")
    value: float = Field(0.0, description="a number to sweep over; reported back as 'value'")


class NoiseSettings(Strict):
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


class FgsmSettings(Strict):
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


class TsneSettings(Strict):
    """The ``settings:`` section of a t-SNE sweep (the sweep's grid usually varies ``perplexity``)."""

    perplexity: float = Field(30.0, gt=0, description="t-SNE perplexity; must be below the number of images embedded")
    dims: list[Literal[2, 3]] = Field([2, 3], min_length=1, description="embedding dimensions, each embedded separately")
    splits: list[Literal["test", "train", "val"]] = Field(["test"], min_length=1, description="whose features to embed")
    marker_by: Literal["gender", "angle", "race", "session", "split", "none"] = Field("gender", description="marker of the scatter plots")
    pca_dims: int = Field(50, ge=2, description="PCA dimensions before t-SNE")
    k_neighbors: int = Field(5, ge=1, description="k of trustworthiness and k-NN accuracy")
    seed: int = Field(0, description="seed of PCA and t-SNE")

    @field_validator("dims", "splits")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"values must not repeat, got {values}")
        return values


class SaliencySettings(Strict):
    """The ``settings:`` section of a saliency sweep."""

    images: list[str] = Field([], description="file name stems (e.g. AF01HAS), case-insensitive; any split")
    per_class: int | None = Field(None, ge=1, description="first N test images of each class (neither given: 1)")
    target: Literal["true_class", "predicted_class"] = Field("true_class", description="class whose score is explained")
    gradcam_layer: str = Field("layer4", description="Grad-CAM layer, a module name of the model or its backbone")
    center_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="side of the central box / image side")

    @model_validator(mode="after")
    def _one_way_of_choosing(self) -> SaliencySettings:
        if self.images and self.per_class is not None:
            raise ValueError(
                f"give settings.images ({self.images}) or settings.per_class ({self.per_class}), not both; "
                "to pick images by name from a sweep file that sets per_class, add settings.per_class=null"
            )
        return self


class BiasSettings(Strict):
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


class TransferSettings(GeneratorConfig):
    """The ``settings:`` section: the generator's size and training (GeneratorConfig) plus the evaluation."""

    val_pairs: int = Field(128, ge=0, description="val-identity pairs scored after each epoch (gen_val_l1)")
    panel_people: int = Field(4, ge=0, description="test people in the panel (0: no panel)")
    n_boot: int = Field(2000, ge=1, description="resamples of the subject-clustered bootstrap")
    batch_size_eval: int = Field(64, ge=1)


GAMMA_WORDS = ("scale", "auto")


class SvmConfigError(ValueError):
    """An SVM setting that cannot work with the trial's data (the message names both keys)."""


class SvmSettings(Strict):
    """The ``settings:`` section: one grid point (C, gamma, kernel) and how it is scored."""

    C: float = Field(1.0, gt=0.0, description="SVC regularisation (larger = less regularised)")
    gamma: Literal["scale", "auto"] | float = Field(
        "scale", description="RBF/poly kernel width: 'scale', 'auto' or a number > 0 (linear ignores it)"
    )
    kernel: Literal["rbf", "linear", "poly", "sigmoid"] = "rbf"
    features: Literal["pixels", "model"] = Field(
        "pixels", description="pixels: grayscale, resized, flattened (the reference study's); model: the CNN's penultimate features"
    )
    pixel_size: int = Field(48, ge=4, le=256, description="pixel features: side in px (<= data.image_size)")
    folds: int = Field(10, ge=2, le=100, description="subject-disjoint cross-validation folds")
    include_val: bool = Field(True, description="cross-validate over train + val (the SVM needs no separate val set)")
    pca_components: int | None = Field(None, ge=1, description="PCA inside each fold before the SVC; None = off")
    seed: int = Field(0, description="fixes the fold assignment (StratifiedGroupKFold shuffle) and PCA's solver")

    @field_validator("gamma", mode="before")
    @classmethod
    def _gamma_word_or_positive_number(cls, value: Any) -> Any:
        # YAML gives 0.001 as a float, MLflow params give "0.001": both are numbers here
        if isinstance(value, str) and value in GAMMA_WORDS:
            return value
        if not isinstance(value, bool):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if math.isfinite(number) and number > 0.0:
                return number
        raise ValueError(f"gamma must be 'scale', 'auto' or a number > 0, got {value!r}")

    def point(self) -> dict[str, Any]:
        """This trial's SVC hyper-parameters {"C", "gamma", "kernel"} (core.svm.GRID_KEYS)."""
        from fer_ray.core.svm import GRID_KEYS  # scikit-learn: not while a sweep file is validated

        return {key: getattr(self, key) for key in GRID_KEYS}


#: experiment kind -> its settings model
SETTINGS: dict[str, type[BaseModel]] = {
    "finetune": FinetuneSettings,
    "svm": SvmSettings,
    "evaluate": EvaluateSettings,
    "probe": ProbeSettings,
    "noise": NoiseSettings,
    "fgsm": FgsmSettings,
    "tsne": TsneSettings,
    "saliency": SaliencySettings,
    "bias": BiasSettings,
    "transfer": TransferSettings,
}
#: the kinds that evaluate a trained model (``source.model``); the others train their own
EVALUATES_MODEL: frozenset[str] = frozenset({"svm", "evaluate", "noise", "fgsm", "tsne", "saliency", "bias", "transfer"})
