"""The reference study's SVM baseline as pure functions: features, subject-disjoint folds, the C x gamma x kernel
grid, one grid point's 10-fold CV score, the best point, and the test-set evaluation.

One grid point = one call of :func:`cv_score_point` (one Ray Tune trial in fer_ray); its numbers are
exactly those of sklearn's ``GridSearchCV(svm_pipeline(...), param_grid, cv=folds,
scoring="accuracy").cv_results_`` for that point, and :func:`best_point` picks the point GridSearchCV
would pick. Standardisation (and optional PCA) sit inside the pipeline, so they are fitted on each
fold's training part only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fer_ray.core.data.records import DataError
from fer_ray.core.embedding import extract_features
from fer_ray.core.evaluate import as_float_images, classification_metrics

#: ITU-R 601-2 luma weights for R, G, B, as PIL's convert("L"); written out because torchvision's
#: rgb_to_grayscale uses 0.2989 for R (weights summing to 0.9999).
_LUMA_601 = torch.tensor([0.299, 0.587, 0.114])
#: The SVC hyper-parameters a grid point sets (pipeline step "svc").
GRID_KEYS: tuple[str, ...] = ("C", "gamma", "kernel")


# ----------------------------------------------------------------------------------------- features


def pixel_features(images: torch.Tensor, size: int, batch_size: int = 256) -> np.ndarray:
    """The reference study's pixel features: grayscale, resized, flattened.

    images: uint8 (N, 3, S, S) RGB 0..255 (or float in [0,1]), torch tensor or numpy array.
    size: output side in px. Grayscale is ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B, PIL's
    convert("L") without its rounding to uint8); resizing is bilinear with antialiasing (as PIL).
    Returns float32 (N, size*size) in [0,1], row-major pixels. No standardisation here: that is
    fitted per fold inside :func:`svm_pipeline`.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"feature image size must be >= 1 px, got {size}")
    features = np.empty((images.shape[0], size * size), dtype=np.float32)
    for start in range(0, images.shape[0], batch_size):  # batches bound the float copy's memory
        batch = as_float_images(images[start : start + batch_size].cpu())
        gray = torch.tensordot(batch, _LUMA_601, dims=([1], [0])).unsqueeze(1)  # (B, 1, H, W)
        resized = TF.resize(gray, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        features[start : start + batch.shape[0]] = resized.reshape(batch.shape[0], -1).numpy()
    return features


def model_features(model: nn.Module, images: torch.Tensor, batch_size: int = 128, device: torch.device | None = None) -> np.ndarray:
    """Penultimate features ``model.features(x)`` for every image: float32 numpy (N, D).

    model: a FerNet (or any module with ``features``: float [0,1] (B, 3, H, W) -> (B, D)).
    images: uint8 (N, 3, H, W) 0..255 or float [0,1]. device: default the model's own. A thin
    numpy view of embedding.extract_features (eval mode, previous mode restored).
    """
    return extract_features(model, images, batch_size, device).numpy()


# ------------------------------------------------------------------------------------ folds and grid


def subject_folds(labels: np.ndarray, subjects: np.ndarray, n_splits: int = 10, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds that never put one person on both sides, class-stratified.

    labels: int (N,); subjects: (N,) identity per row. sklearn StratifiedGroupKFold(shuffle=True,
    random_state=seed). Returns n_splits pairs (train_rows, val_rows) of int64 row indices.
    Raises DataError (a ValueError) when there are fewer subjects than folds or the lengths differ.
    """
    labels, subjects = np.asarray(labels), np.asarray(subjects, dtype=object)
    if labels.shape[0] != subjects.shape[0]:
        raise DataError(f"labels ({labels.shape[0]} rows) and subjects ({subjects.shape[0]} rows) differ in length")
    n_subjects = len(set(subjects.tolist()))
    if n_subjects < n_splits:
        raise DataError(
            f"{n_subjects} subjects cannot fill n_splits={n_splits} subject-disjoint folds; use at most {n_subjects} folds or more subjects"
        )
    folder = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [
        (train.astype(np.int64), val.astype(np.int64)) for train, val in folder.split(np.zeros((len(labels), 1)), labels, groups=subjects)
    ]


def svm_pipeline(C: float = 1.0, gamma="scale", kernel: str = "rbf", pca_components: int | None = None, seed: int = 0) -> Pipeline:
    """StandardScaler -> PCA(pca_components, whiten=False) when given -> SVC(C, gamma, kernel).

    Step names "scale", "pca", "svc" (GridSearchCV parameters are ``svc__C`` ...). ``seed`` fixes
    PCA's randomized solver and SVC's random_state; other SVC settings are sklearn's defaults.
    """
    steps: list[tuple[str, object]] = [("scale", StandardScaler())]
    if pca_components is not None:
        steps.append(("pca", PCA(n_components=pca_components, random_state=seed)))
    steps.append(("svc", SVC(C=C, gamma=gamma, kernel=kernel, random_state=seed)))
    return Pipeline(steps)


def param_grid(C: Sequence[float], gamma: Sequence, kernel: Sequence[str]) -> list[dict]:
    """Every grid point as {"C", "gamma", "kernel"}, in sklearn ParameterGrid order (C slowest,
    kernel fastest), one point per listed gamma even for linear (which ignores it), exactly as
    GridSearchCV enumerates ``{"svc__C": C, "svc__gamma": gamma, "svc__kernel": kernel}``."""
    return list(ParameterGrid({"C": list(C), "gamma": list(gamma), "kernel": list(kernel)}))


def pipeline_params(params: dict) -> dict:
    """{"C", "gamma", "kernel"} -> the pipeline's names {"svc__C", "svc__gamma", "svc__kernel"}."""
    return {f"svc__{key}": value for key, value in params.items()}


# ---------------------------------------------------------------------------------- one grid point


def cv_score_point(
    features: np.ndarray,
    labels: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    params: dict,
    pca_components: int | None = None,
    seed: int = 0,
) -> dict:
    """Cross-validated accuracy of one grid point: the point's row of GridSearchCV.cv_results_.

    features: float (N, D); labels: int (N,); folds: (train_rows, val_rows) pairs (subject_folds).
    params: {"C", "gamma", "kernel"}. Returns {"params", "mean_test_score", "std_test_score",
    "split{i}_test_score" for every fold, "mean_fit_time", "std_fit_time", "mean_score_time",
    "std_score_time" (s), "wall_time_s"}; scores are accuracies in [0,1] (NaN for a failed fit,
    as GridSearchCV's error_score).
    """
    unknown = set(params) - set(GRID_KEYS)
    if unknown:
        raise ValueError(f"unknown SVM grid parameter(s) {sorted(unknown)}; expected {list(GRID_KEYS)}")
    started = time.perf_counter()
    outcome = cross_validate(
        svm_pipeline(**params, pca_components=pca_components, seed=seed),
        features,
        labels,
        cv=list(folds),
        scoring="accuracy",
        error_score=np.nan,
    )
    result: dict = {"params": dict(params)}
    for i, score in enumerate(outcome["test_score"]):
        result[f"split{i}_test_score"] = float(score)
    for key, name in (("test_score", "test_score"), ("fit_time", "fit_time"), ("score_time", "score_time")):
        mean, std = _grid_search_mean_std(outcome[key])
        result[f"mean_{name}"], result[f"std_{name}"] = mean, std
    result["wall_time_s"] = time.perf_counter() - started
    return result


def _grid_search_mean_std(values: np.ndarray) -> tuple[float, float]:
    # GridSearchCV._format_results' own expressions on a (1, n_splits) array, so the floats match bit for bit.
    array = np.array(values, dtype=np.float64).reshape(1, -1)
    means = np.average(array, axis=1)
    stds = np.sqrt(np.average((array - means[:, np.newaxis]) ** 2, axis=1))
    return float(means[0]), float(stds[0])


def rank_test_scores(results: Sequence[dict]) -> np.ndarray:
    """GridSearchCV's rank_test_score for results in grid order: int32 (P,), 1 = best, ties share the
    lowest rank, NaN means rank with (below) the worst."""
    means = np.array([r["mean_test_score"] for r in results], dtype=np.float64)
    if np.isnan(means).all():
        return np.ones_like(means, dtype=np.int32)
    means = np.nan_to_num(means, nan=np.nanmin(means) - 1)
    return rankdata(-means, method="min").astype(np.int32)


def best_point(results: Sequence[dict]) -> dict:
    """The result with the best mean CV accuracy; among ties the first in ``results``' order.

    results: cv_score_point outputs **in grid order** (param_grid's order), so the pick equals
    GridSearchCV's best_params_ (its rank_test_score.argmin()).
    """
    if not results:
        raise ValueError("best_point needs at least one grid result, got none")
    return results[int(rank_test_scores(results).argmin())]


# --------------------------------------------------------------------------------------- test set


def fit_and_test(
    features_train: np.ndarray,
    y_train: np.ndarray,
    features_test: np.ndarray,
    y_test: np.ndarray,
    params: dict,
    pca_components: int | None = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> dict:
    """Refit the pipeline with ``params`` on the whole training set and score it on the test set.

    features_*: float (N, D); y_*: int (N,). classes: names for label 0..C-1 (default: the label
    values seen, as strings). Returns evaluate.classification_metrics' dict ({"accuracy",
    "macro_f1", "per_class_recall", "confusion" (C x C list of lists, rows = true), "n"}) plus
    "params" and "fit_time_s".
    """
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if classes is None:
        classes = [str(c) for c in range(int(max(y_train.max(), y_test.max())) + 1)]
    model = svm_pipeline(**params, pca_components=pca_components, seed=seed)
    started = time.perf_counter()
    model.fit(features_train, y_train)
    fit_time_s = time.perf_counter() - started
    predicted = model.predict(features_test).astype(np.int64)
    # One-hot "probabilities" so the SVM is scored by the very function that scores the CNN.
    one_hot = np.eye(len(classes), dtype=np.float32)[predicted]
    metrics = classification_metrics(torch.from_numpy(one_hot), y_test, classes)
    return {"params": dict(params), **metrics, "fit_time_s": fit_time_s}


def untuned_baseline(
    features_train: np.ndarray,
    y_train: np.ndarray,
    features_test: np.ndarray,
    y_test: np.ndarray,
    pca_components: int | None = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> dict:
    """fit_and_test with sklearn's SVC defaults for C, gamma and kernel (the reference study's untuned SVM),
    inside the same scaler (and PCA) pipeline."""
    defaults = SVC().get_params()
    params = {key: defaults[key] for key in GRID_KEYS}
    return fit_and_test(features_train, y_train, features_test, y_test, params, pca_components, classes, seed)
