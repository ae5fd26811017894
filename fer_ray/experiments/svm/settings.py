"""The SVM experiment's settings: one grid point (C, gamma, kernel) and how it is scored (defined
with every experiment's settings in experiments/settings.py, which imports no science stack)."""

from __future__ import annotations

from fer_ray.experiments.settings import GAMMA_WORDS, SvmConfigError
from fer_ray.experiments.settings import SvmSettings as Settings

__all__ = ["GAMMA_WORDS", "Settings", "SvmConfigError"]
