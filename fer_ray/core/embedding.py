"""How a trained FER network's features cluster: penultimate-layer features, their t-SNE embedding,
and how well an embedding keeps neighbourhoods and expressions (leave-one-person-out k-NN).

Features are float32 (N, D) on the CPU; embeddings are float64 (N, 2|3) numpy arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, trustworthiness
from sklearn.neighbors import NearestNeighbors
from torch import nn

from fer_ray.core.device import autocast, model_device, use_channels_last
from fer_ray.core.evaluate import as_float_images, eval_mode


class EmbeddingError(ValueError):
    """Bad input to a feature or embedding function; the message names the argument and its value."""


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 128, device: torch.device | None = None) -> torch.Tensor:
    """Penultimate features ``model.features(x)`` of every image: float32 (N, D) on the CPU.

    images: uint8 (N, 3, H, W) 0..255 or float [0,1]. device: default the model's own; a model
    elsewhere is moved there (in place). Eval mode (bf16 autocast + channels_last on CUDA), the
    model's previous mode restored afterwards.
    """
    if not hasattr(model, "features"):
        raise EmbeddingError(f"extract_features needs a model with a features(x) method; {type(model).__name__} has none")
    device = device or model_device(model)
    model.to(device)
    outputs = []
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = as_float_images(images[start : start + batch_size].to(device, non_blocking=True))
            if use_channels_last(device):
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                outputs.append(model.features(batch).float().cpu())
    if not outputs:
        return torch.empty((0, getattr(model, "feature_dim", 0)), dtype=torch.float32)
    return torch.cat(outputs)


def embed_tsne(features, perplexity: float = 30.0, dims: int = 2, seed: int = 0, pca_dims: int = 50) -> np.ndarray:
    """t-SNE embedding of ``features`` (N, D) (numpy or tensor): float64 (N, dims).

    The features are first reduced by PCA to min(pca_dims, N - 1, D) dimensions, then embedded by
    sklearn's TSNE (init='pca', learning_rate='auto', random_state=seed). perplexity must be
    positive and below N; dims must be 2 or 3.
    """
    array = _as_2d_array(features, "features")
    n_samples, n_features = array.shape
    if dims not in (2, 3):
        raise EmbeddingError(f"t-SNE dims must be 2 or 3, got {dims}")
    if not 0 < perplexity < n_samples:
        raise EmbeddingError(f"t-SNE perplexity ({perplexity}) must be positive and below the number of samples ({n_samples})")
    components = min(pca_dims, n_samples - 1, n_features)
    if components < 1:
        raise EmbeddingError(f"cannot embed {n_samples} samples of {n_features} features (pca_dims={pca_dims})")
    reduced = PCA(n_components=components, random_state=seed).fit_transform(array)
    tsne = TSNE(n_components=dims, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(reduced)


def embedding_quality(features_high, embedding, labels, identities, k: int = 5) -> dict[str, float]:
    """How well an embedding keeps the features' neighbourhoods and classes, each in [0,1].

    features_high: (N, D); embedding: (N, d); labels: (N,) any class labels; identities: (N,) the
    person of each point. Returns {"trustworthiness": sklearn.manifold.trustworthiness(n_neighbors=k),
    "knn_accuracy": leave-one-PERSON-out k-NN accuracy in the embedding: each point is classified by
    the majority label of its k nearest points of OTHER people (ties -> the smallest label)}. Other
    people only, because a person's own images sit close together whatever their expression (84 % of
    first neighbours were the same person in a weak model), which would credit the embedding with
    recognising people rather than expressions.
    """
    high = _as_2d_array(features_high, "features_high")
    low = _as_2d_array(embedding, "embedding")
    labels, identities = np.asarray(labels), np.asarray(identities)
    if not (len(high) == len(low) == len(labels) == len(identities)):
        raise EmbeddingError(
            f"features_high ({len(high)}), embedding ({len(low)}), labels ({len(labels)}) and identities "
            f"({len(identities)}) must have the same length"
        )
    if not 1 <= k < len(low) / 2:
        raise EmbeddingError(f"k ({k}) must be at least 1 and below half the number of samples ({len(low)})")
    _, label_ids = np.unique(labels, return_inverse=True)
    _, person = np.unique(identities.astype(str), return_inverse=True)
    largest = int(np.bincount(person).max())
    if len(low) - largest < k:
        raise EmbeddingError(
            f"k ({k}) needs at least k images of other people for every point; the largest person has {largest} of {len(low)}"
        )
    # The k nearest points of other people are among the k + largest - 1 nearest others (at most
    # largest - 1 of them share the point's person); kneighbors() without X leaves the point out.
    reach = min(len(low) - 1, k + largest - 1)
    neighbours = NearestNeighbors(n_neighbors=reach).fit(low).kneighbors(return_distance=False)
    other = person[neighbours] != person[:, None]
    first_k = np.cumsum(other, axis=1) <= k
    chosen = neighbours[other & first_k].reshape(len(low), k)  # row-major keeps each row's distance order
    votes = stats.mode(label_ids[chosen], axis=1, keepdims=False).mode
    return {
        "trustworthiness": float(trustworthiness(high, low, n_neighbors=k)),
        "knn_accuracy": float(np.mean(votes == label_ids)),
    }


def _as_2d_array(values, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = array.astype(np.float64, copy=False)
    if array.ndim != 2:
        raise EmbeddingError(f"{name} must be a 2-D (N, D) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise EmbeddingError(f"{name} holds non-finite values (NaN or inf)")
    return array
