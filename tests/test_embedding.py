"""Penultimate-layer features, t-SNE and the embedding's quality (leave-one-person-out k-NN) on real
torch nets and scikit-learn references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from fer_ray.core.config import ModelConfig
from fer_ray.core.embedding import EmbeddingError, embed_tsne, embedding_quality, extract_features
from fer_ray.core.models import build_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One OpenMP / BLAS / torch thread: on the shared 2-core test machine, t-SNE's OpenMP threads
    spin-waiting against other processes made a 0.5 s embedding take 10-45 s."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(torch_threads)


@pytest.fixture(scope="module")
def fernet():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet18", weights="none", head=[16], dropout=0.3), num_classes=7)


def test_extract_features_matches_model_features(fernet):
    images = (torch.rand(5, 3, 32, 32) * 255).to(torch.uint8)
    fernet.train()
    features = extract_features(fernet, images, batch_size=2)
    assert fernet.training
    fernet.eval()
    with torch.no_grad():
        expected = fernet.features(images.float() / 255)
    assert features.shape == (5, 512) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def blobs():
    """3 well-separated clusters of 20 points in 20-D, each a 2-D Gaussian blob mapped linearly into
    20-D (plus a little noise): low intrinsic dimension, so neighbourhoods can be kept in 2-D/3-D."""
    rng = np.random.default_rng(0)
    latent, labels = make_blobs(n_samples=60, n_features=2, centers=3, center_box=(-30, 30), random_state=0)
    features = latent @ rng.normal(size=(2, 20)) + 0.01 * rng.normal(size=(60, 20))
    return features, labels


@pytest.mark.parametrize("dims", [2, 3])
def test_tsne_keeps_well_separated_clusters(blobs, dims):
    features, labels = blobs
    embedding = embed_tsne(torch.as_tensor(features), perplexity=10, dims=dims, seed=0)
    assert embedding.shape == (60, dims) and np.isfinite(embedding).all()
    quality = embedding_quality(features, embedding, labels, identities=np.arange(len(labels)) // 3, k=5)
    assert quality["trustworthiness"] > 0.9
    assert quality["knn_accuracy"] > 0.9


def test_tsne_rejects_perplexity_not_below_sample_count(blobs):
    features, _ = blobs
    with pytest.raises(EmbeddingError, match=r"perplexity \(60\).*number of samples \(60\)"):
        embed_tsne(features, perplexity=60)
    with pytest.raises(EmbeddingError, match="dims must be 2 or 3, got 4"):
        embed_tsne(features, perplexity=5, dims=4)


def test_knn_accuracy_leaves_each_person_out():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(40, 2))
    labels = rng.integers(0, 3, size=40)
    identities = np.repeat([f"P{i}" for i in range(10)], 4)
    expected = cross_val_predict(KNeighborsClassifier(n_neighbors=5), embedding, labels, groups=identities, cv=LeaveOneGroupOut())
    quality = embedding_quality(rng.normal(size=(40, 6)), embedding, labels, identities, k=5)
    assert quality["knn_accuracy"] == np.mean(expected == labels)
    assert 0 <= quality["trustworthiness"] <= 1


def test_knn_accuracy_does_not_credit_recognising_people():
    # 12 people, each a tight cluster of 7 images far from the others, all of one class per person
    # (person p shows class p % 7): neighbours of the same person give the class away (image-level
    # leave-one-out scores 1.0) though nothing in the embedding separates classes across people.
    rng = np.random.default_rng(1)
    people, images = 12, 7
    embedding = np.repeat(rng.normal(scale=50, size=(people, 2)), images, axis=0)
    embedding += rng.normal(scale=0.1, size=embedding.shape)
    labels = np.repeat(np.arange(people) % 7, images)
    identities = np.repeat(np.arange(people), images)
    image_level = embedding_quality(embedding, embedding, labels, np.arange(people * images), k=3)
    person_level = embedding_quality(embedding, embedding, labels, identities, k=3)
    assert image_level["knn_accuracy"] == 1.0
    assert person_level["knn_accuracy"] < 0.5
    with pytest.raises(EmbeddingError, match=r"identities \(3\) must have the same length"):
        embedding_quality(embedding, embedding, labels, identities[:3], k=3)
