"""Gaussian noise, FGSM and PGD against independent references written here with plain autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fer_ray.core.config import ModelConfig
from fer_ray.core.evaluate import predict_logits, predict_proba
from fer_ray.core.models import build_model
from fer_ray.core.robustness import (
    EpsilonError,
    RobustnessError,
    VarianceError,
    add_gaussian_noise,
    fgsm_accuracy,
    fgsm_perturb,
    input_gradient_sign,
    noisy_accuracy,
    pgd_accuracy,
    pgd_attack,
    sigma_to_variance,
    standard_normal_noise,
    variance_to_sigma,
)

EPSILONS = [0.0, 0.001, 0.01, 0.05, 0.3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny tensors run faster on one thread


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """Random-init ResNet-18 FerNet (linear head, 7 classes) for 32x32 images."""
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet18", weights="none", head=[]), num_classes=7).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """12 seeded random images, float (12, 3, 32, 32) in [0,1]."""
    return torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def labels(resnet, images) -> torch.Tensor:
    """The model's own clean predictions, so clean accuracy is 1 and attacks have room to hurt it."""
    return predict_logits(resnet, images).argmax(dim=1)


def tiny_relu_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def reference_fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One epsilon, the textbook way: backward of the summed cross-entropy, step along the sign."""
    x = images.clone().requires_grad_(True)
    F.cross_entropy(model(x), labels, reduction="sum").backward()
    return torch.clamp(x.detach() + epsilon * x.grad.sign(), 0, 1)


@pytest.fixture(scope="module")
def trained_tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A two-hidden-layer ReLU MLP trained to ~100 % on three separable classes of 3x6x6 images (each class is
    grey 0.5 plus its own fixed pattern, plus small pixel noise)."""
    generator = torch.Generator().manual_seed(3)
    patterns = torch.randn(3, 3, 6, 6, generator=generator) * 0.1
    labels = torch.arange(150) % 3
    images = (0.5 + patterns[labels] + 0.05 * torch.randn(150, 3, 6, 6, generator=generator)).clamp(0, 1)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval(), images, labels


# ---------------------------------------------------------------------------------------------
# Gaussian noise
# ---------------------------------------------------------------------------------------------


def test_variance_sigma_conversion():
    assert variance_to_sigma(0.04) == pytest.approx(0.2)
    assert variance_to_sigma(0.0) == 0.0
    assert sigma_to_variance(0.2) == pytest.approx(0.04)
    assert sigma_to_variance(variance_to_sigma(0.1)) == pytest.approx(0.1)
    with pytest.raises(VarianceError, match=r"got -0\.1"):
        variance_to_sigma(-0.1)
    with pytest.raises(VarianceError, match="got nan"):
        variance_to_sigma(float("nan"))
    with pytest.raises(VarianceError, match=r"sigma .* got -0\.5"):
        sigma_to_variance(-0.5)


def test_noise_reproducible_per_seed_and_clipped():
    grey = torch.full((64, 3, 16, 16), 0.5)
    first = add_gaussian_noise(grey, 0.001, seed=7)
    assert torch.equal(first, add_gaussian_noise(grey, 0.001, seed=7))
    assert not torch.equal(first, add_gaussian_noise(grey, 0.001, seed=8))
    assert first.shape == grey.shape and first.dtype == torch.float32
    # sigma 0.032 around 0.5: clipping is ~15 sigma away, so the noise is the plain Gaussian
    noise = (first - grey).flatten()
    assert noise.mean().abs() < 0.001
    assert noise.var().item() == pytest.approx(0.001, rel=0.03)
    # a large variance clips at both ends, and every value stays in [0,1]
    loud = add_gaussian_noise(grey, 1.0, seed=7)
    assert loud.min() == 0.0 and loud.max() == 1.0
    assert (loud == 0).float().mean() > 0.2 and (loud == 1).float().mean() > 0.2
    # variance 0 changes nothing; uint8 input is read as /255
    assert torch.equal(add_gaussian_noise(grey, 0.0, seed=7), grey)
    as_uint8 = torch.full((2, 3, 4, 4), 51, dtype=torch.uint8)
    assert torch.equal(add_gaussian_noise(as_uint8, 0.0, seed=0), torch.full((2, 3, 4, 4), 0.2))


def test_noise_does_not_depend_on_batching():
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    whole = add_gaussian_noise(images, 0.05, seed=11)
    pieces = [add_gaussian_noise(images[s : s + 3], 0.05, seed=11, first_index=s) for s in range(0, 10, 3)]
    assert torch.equal(whole, torch.cat(pieces))
    draws = standard_normal_noise((10, 3, 8, 8), seed=11)
    assert torch.equal(draws[4:], standard_normal_noise((6, 3, 8, 8), seed=11, first_index=4))
    assert not torch.equal(draws[0], draws[1])  # each image has its own noise


def test_noisy_accuracy_matches_reference(resnet, images, labels):
    variances = [0.0, 0.01, 0.5]
    result = noisy_accuracy(resnet, images, labels, variances, seed=5, batch_size=5)
    assert list(result) == variances
    clean_correct = (predict_proba(resnet, images).argmax(dim=1) == labels).numpy()
    assert np.array_equal(result[0.0]["correct"], clean_correct)
    assert result[0.0]["accuracy"] == 1.0
    for variance in variances:
        noisy = add_gaussian_noise(images, variance, seed=5)
        expected = (predict_logits(resnet, noisy, batch_size=5).argmax(dim=1) == labels).numpy()
        assert result[variance]["correct"].dtype == bool
        assert np.array_equal(result[variance]["correct"], expected)
        assert result[variance]["accuracy"] == pytest.approx(expected.mean())
    assert result[0.5]["accuracy"] < 1.0  # heavy noise does change some predictions


# ---------------------------------------------------------------------------------------------
# FGSM
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny", "resnet"])
def test_fgsm_images_equal_reference(which, resnet, images, labels):
    if which == "tiny":
        model = tiny_relu_net()
        x = torch.rand(16, 3, 6, 6, generator=torch.Generator().manual_seed(9))
        y = torch.arange(16) % 3
    else:
        model, x, y = resnet, images, labels
    sign = input_gradient_sign(model, x, y)
    assert set(sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (sign != 0).float().mean() > 0.5
    for epsilon in EPSILONS:
        assert torch.equal(fgsm_perturb(x, sign, epsilon), reference_fgsm(model, x, y, epsilon))


def test_fgsm_multi_epsilon_equals_one_epsilon_at_a_time(resnet, images, labels):
    result = fgsm_accuracy(resnet, images, labels, EPSILONS, batch_size=5)
    assert list(result) == EPSILONS
    for epsilon in EPSILONS:
        single = fgsm_accuracy(resnet, images, labels, [epsilon], batch_size=5)[epsilon]
        assert np.array_equal(result[epsilon]["correct"], single["correct"])
        assert result[epsilon]["accuracy"] == single["accuracy"]
        # and against the textbook reference, batch by batch
        expected = np.concatenate(
            [
                (resnet(reference_fgsm(resnet, images[s : s + 5], labels[s : s + 5], epsilon)).argmax(dim=1) == labels[s : s + 5]).numpy()
                for s in range(0, len(labels), 5)
            ]
        )
        assert np.array_equal(result[epsilon]["correct"], expected)
    clean = (predict_proba(resnet, images).argmax(dim=1) == labels).float().mean().item()
    assert result[0.0]["accuracy"] == clean == 1.0
    assert result[0.3]["accuracy"] < 1.0


def test_fgsm_examples_and_top3(resnet, images, labels):
    result = fgsm_accuracy(resnet, images, labels, [0.0, 0.01, 0.3], batch_size=2, return_examples=3)
    for epsilon, entry in result.items():
        assert entry["examples"].shape == (3, 3, 32, 32)
        expected = torch.cat(
            [  # the first batch of 2 and the first image of the second
                reference_fgsm(resnet, images[:2], labels[:2], epsilon),
                reference_fgsm(resnet, images[2:4], labels[2:4], epsilon)[:1],
            ]
        )
        assert torch.equal(entry["examples"], expected)
        probs = resnet(entry["examples"]).softmax(dim=1)
        top = probs.topk(3, dim=1)
        assert torch.equal(entry["top3_classes"], top.indices)
        assert torch.allclose(entry["top3_probs"], top.values)
        assert (entry["top3_probs"][:, :-1] >= entry["top3_probs"][:, 1:]).all()
    assert torch.equal(result[0.0]["examples"], images[:3])
    assert "examples" not in fgsm_accuracy(resnet, images, labels, [0.01])[0.01]


def test_attacks_restore_mode_and_leave_grads_alone(resnet, images, labels):
    resnet.zero_grad(set_to_none=True)  # the references elsewhere call backward()
    resnet.train()
    try:
        fgsm_accuracy(resnet, images[:4], labels[:4], [0.01])
        pgd_attack(resnet, images[:4], labels[:4], 0.01, steps=2)
        assert resnet.training
        assert all(p.grad is None for p in resnet.parameters())
    finally:
        resnet.eval()


# ---------------------------------------------------------------------------------------------
# PGD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_ball_and_range(random_start, resnet, images, labels):
    edges = images.clone()
    edges[:, 0] = 0.0  # pixels at the ends of [0,1], where only the range bounds them
    edges[:, 1] = 1.0
    epsilon = 0.03
    adversarial = pgd_attack(resnet, edges, labels, epsilon, steps=4, random_start=random_start, seed=1)
    assert adversarial.shape == edges.shape
    assert (adversarial - edges).abs().max() <= epsilon + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert (adversarial - edges).abs().max() > 0.5 * epsilon  # it did move
    again = pgd_attack(resnet, edges, labels, epsilon, steps=4, random_start=random_start, seed=1)
    assert torch.equal(adversarial, again)
    other_seed = pgd_attack(resnet, edges, labels, epsilon, steps=4, random_start=random_start, seed=2)
    assert torch.equal(adversarial, other_seed) != random_start
    assert torch.equal(pgd_attack(resnet, edges, labels, 0.0), edges)


def test_pgd_one_step_from_the_images_is_fgsm(resnet, images, labels):
    sign = input_gradient_sign(resnet, images, labels)
    one_step = pgd_attack(resnet, images, labels, 0.02, steps=1, step_size=0.02)
    assert torch.equal(one_step, fgsm_perturb(images, sign, 0.02))


def test_pgd_accuracy_at_most_fgsm_on_trained_model(trained_tiny):
    model, images, labels = trained_tiny
    epsilons = [0.0, 0.03, 0.07, 0.1]
    fgsm = fgsm_accuracy(model, images, labels, epsilons)
    pgd = pgd_accuracy(model, images, labels, epsilons, steps=10, batch_size=64)
    pgd_random = pgd_accuracy(model, images, labels, epsilons, steps=10, random_start=True, seed=0, batch_size=64)
    assert fgsm[0.0]["accuracy"] == pgd[0.0]["accuracy"] >= 0.95  # the model learned the classes
    for epsilon in epsilons[1:]:
        assert pgd[epsilon]["accuracy"] <= fgsm[epsilon]["accuracy"]
        assert pgd_random[epsilon]["accuracy"] <= fgsm[epsilon]["accuracy"]
    assert any(pgd[e]["accuracy"] < fgsm[e]["accuracy"] for e in epsilons[1:])
    assert 0.0 < pgd[0.07]["accuracy"] < fgsm[0.07]["accuracy"] < fgsm[0.0]["accuracy"]
    # pgd_accuracy's predictions are those of pgd_attack's images
    adversarial = pgd_attack(model, images[:64], labels[:64], 0.07, steps=10)
    expected = (model(adversarial).argmax(dim=1) == labels[:64]).numpy()
    assert np.array_equal(pgd[0.07]["correct"][:64], expected)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [-0.1, 1.5, float("nan")])
def test_invalid_epsilon_is_named(epsilon, resnet, images, labels):
    shown = "nan" if math.isnan(epsilon) else str(epsilon)
    with pytest.raises(EpsilonError, match=rf"epsilon {shown} is outside \[0, 1\]"):
        fgsm_accuracy(resnet, images, labels, [0.01, epsilon])
    with pytest.raises(EpsilonError, match=rf"epsilon {shown}"):
        pgd_attack(resnet, images, labels, epsilon)
    with pytest.raises(EpsilonError, match=rf"epsilon {shown}"):
        fgsm_perturb(images, torch.zeros_like(images), epsilon)


def test_other_bad_input_is_named(resnet, images, labels):
    with pytest.raises(VarianceError, match=r"got -0\.2"):
        noisy_accuracy(resnet, images, labels, [0.1, -0.2], seed=0)
    with pytest.raises(VarianceError, match=r"got -1\.0"):
        add_gaussian_noise(images, -1.0, seed=0)
    with pytest.raises(RobustnessError, match=r"labels must be \(N,\) = \(12,\).*got shape \(11,\)"):
        fgsm_accuracy(resnet, images, labels[:11], [0.01])
    with pytest.raises(RobustnessError, match=r"seed must be an int >= 0, got -3"):
        add_gaussian_noise(images, 0.1, seed=-3)
    with pytest.raises(RobustnessError, match=r"PGD steps must be an int >= 1, got 0"):
        pgd_attack(resnet, images, labels, 0.01, steps=0)
    with pytest.raises(RobustnessError, match=r"step_size must be a finite number > 0, got -0\.1"):
        pgd_accuracy(resnet, images, labels, [0.01], step_size=-0.1)
