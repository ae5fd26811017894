"""The SVM experiment's settings: one grid point (C, gamma, kernel) and how it is scored. Imports no
science stack: a sweep file is validated with it before anything heavy is loaded."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from fer_ray.core.config import Strict

GAMMA_WORDS = ("scale", "auto")


class SvmConfigError(ValueError):
    """An SVM setting that cannot work with the trial's data (the message names both keys)."""


class Settings(Strict):
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
