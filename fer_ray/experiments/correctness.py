"""The per-image correctness artifact of the robustness experiments (noise, fgsm): one .npz per
trial, so paired tests between models or settings (McNemar) can be run later without the model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fer_ray.core.files import atomic_write


def save_correctness(path: Path, levels_name: str, results: Mapping[float, Mapping], test, **extra) -> Path:
    """Write ``path`` as .npz (atomically, no pickles) and return it. Arrays:

    ``levels_name`` float (L,): the perturbation levels (noise variances, attack epsilons) in
    ``results`` order; correct bool (L, N): ``results[level]["correct"]`` per test image; labels
    int64 (N,) and dataset_rows int64 (N,): the test split's (``test.labels``, ``test.indices``);
    then every ``extra`` array as given (e.g. identities, noise_seed).
    """
    arrays = {
        levels_name: np.array(list(results), dtype=float),
        "correct": np.stack([entry["correct"] for entry in results.values()]),
        "labels": test.labels.cpu().numpy(),
        "dataset_rows": np.asarray(test.indices, dtype=np.int64),
        **extra,
    }
    return atomic_write(Path(path), lambda temporary: np.savez_compressed(temporary, **arrays))
