"""The SVM's features of every image, computed once per node and cached on its disk.

Features are computed once per node and kept on its disk, never per trial and not in Ray's object
store: experiments do not import ray (they also run from notebooks and tests), the driver would
otherwise have to extract features for every model before any trial starts, and one file under the
tensor cache serves every trial on the node -- and later sweeps on the same data -- at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from fer_ray.core.config import DataConfig
from fer_ray.core.data.cache import load_image_tensors
from fer_ray.core.data.prepare import PreparedData
from fer_ray.core.device import pick_device
from fer_ray.core.files import default_cache_dir, file_sha256, node_cached
from fer_ray.core.model_file import load_model
from fer_ray.core.svm import model_features, pixel_features
from fer_ray.experiments.svm.settings import Settings, SvmConfigError

#: bump when the feature extraction changes, so cached feature files are not reused
FEATURES_VERSION = "svm-features/v1"


def dataset_features(
    data: PreparedData, data_cfg: DataConfig, cfg: Settings, model_file: Path | None = None, model_sha: str | None = None
) -> np.ndarray:
    """float32 (N, D): features of every image of ``data.dataset`` (row i = dataset.images[i]).

    pixels: core.svm.pixel_features at cfg.pixel_size (D = pixel_size^2, values in [0,1]);
    model: core.svm.model_features of the fer_ray model file (D = its feature width). Cached under
    <data.cache_dir or default_cache_dir()>/svm/features/<key>.npy, key = dataset fingerprint +
    feature settings (+ the model file's sha256); see core.files.node_cached.
    """
    if cfg.features == "model" and model_file is None:
        raise SvmConfigError("settings.features='model' needs the trial's model file (source.model)")
    if cfg.features == "model" and model_sha is None:
        model_sha = file_sha256(model_file)
    path = _cache_file(data_cfg, "features", _feature_key(data, cfg, model_sha), suffix=".npy")

    def compute() -> np.ndarray:
        images = load_image_tensors(data.dataset, data_cfg.image_size, data_cfg.cache_dir)  # memory-mapped
        if cfg.features == "pixels":
            return pixel_features(images, cfg.pixel_size)
        model, _ = load_model(model_file)
        return model_features(model, images, device=pick_device())

    return node_cached(path, compute, save=_save_npy, load=lambda p: np.load(p, allow_pickle=False))


def _feature_key(data: PreparedData, cfg: Settings, model_sha: str | None) -> dict[str, Any]:
    key: dict[str, Any] = {"version": FEATURES_VERSION, "fingerprint": data.fingerprint, "features": cfg.features}
    if cfg.features == "pixels":
        key["pixel_size"] = cfg.pixel_size  # pixels do not depend on the model: shared by every model
    else:
        key["model_sha256"] = model_sha
    return key


def describe_features(cfg: Settings, n_features: int) -> str:
    if cfg.features == "pixels":
        return f"pixels: grayscale {cfg.pixel_size}x{cfg.pixel_size} px ({n_features} values)"
    return f"model: CNN penultimate features ({n_features} values)"


def _cache_file(data_cfg: DataConfig, kind: str, key: dict[str, Any], suffix: str = ".json") -> Path:
    root = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return root / "svm" / kind / f"{digest}{suffix}"


def _save_npy(array: np.ndarray, path: Path) -> None:
    with open(path, "wb") as handle:  # a file handle: np.save would append .npy to a path
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
