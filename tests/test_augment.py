"""Batched augmentation: per-sample parameters, torchvision's color semantics, exact flips."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fer_ray.core.config import AugmentConfig
from fer_ray.core.data.augment import augment_batch, color_jitter, flip_and_rotate

STILL = AugmentConfig(rotation_deg=0.0, hflip=False, brightness=0.0, contrast=0.0, saturation=0.0)


def batch(size: int = 8, side: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(size, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_range_are_kept():
    images = batch()
    out = augment_batch(images, AugmentConfig(rotation_deg=30, brightness=0.9, contrast=0.9, saturation=0.9))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.equal(out, images)


def test_no_rotation_no_flip_no_jitter_is_the_identity():
    images = batch()
    assert torch.equal(augment_batch(images, STILL, torch.Generator().manual_seed(1)), images)
    assert torch.equal(augment_batch(images, AugmentConfig(enabled=False)), images)


def test_flip_only_mirrors_exactly_the_flipped_samples():
    images = batch(size=32)
    out = augment_batch(images, STILL.model_copy(update={"hflip": True}), torch.Generator().manual_seed(2))
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(32)]
    kept = [torch.equal(out[i], images[i]) for i in range(32)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is exactly one of the two
    assert 6 <= sum(flipped) <= 26  # p = 0.5 per sample, not one decision for the whole batch


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40)])
def test_rotation_is_per_sample_and_equals_torchvision_rotate(height, width):
    images = torch.rand(4, 3, height, width, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([0.0, 9.0, -23.0, 90.0])
    out = flip_and_rotate(images, torch.zeros(4, dtype=torch.bool), angles)
    for i, angle in enumerate(angles.tolist()):
        reference = TF.rotate(images[i], angle, interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i], reference, atol=1e-5, rtol=0)


def test_flip_and_rotation_share_one_resampling_and_flip_comes_first():
    images = batch(size=4, side=32)
    flip = torch.tensor([True, False, True, False])
    angles = torch.tensor([7.0, 7.0, -12.0, 0.0])
    out = flip_and_rotate(images, flip, angles)
    for i in range(4):
        source = TF.horizontal_flip(images[i]) if flip[i] else images[i]
        reference = TF.rotate(source, float(angles[i]), interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i], reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.3])
def test_each_color_step_alone_equals_torchvision_for_a_fixed_factor(factor):
    images = batch(size=3)  # uniform in [0,1]: factor 1.3 pushes pixels past 1, so clamping counts
    same, one = torch.full((3,), factor), torch.ones(3)
    for factors, reference in (
        ((same, one, one), TF.adjust_brightness),
        ((one, same, one), TF.adjust_contrast),
        ((one, one, same), TF.adjust_saturation),
    ):
        expected = torch.stack([reference(image, factor) for image in images])
        torch.testing.assert_close(color_jitter(images, *factors), expected, atol=2e-6, rtol=0)


def test_fused_jitter_equals_torchvision_chain_with_each_samples_own_factors():
    # mid-range pixels and factors within 20 %: no step leaves [0,1], where the fused pass is exact
    images = 0.25 + 0.5 * batch(size=5)
    draws = torch.rand(3, 5, generator=torch.Generator().manual_seed(4))
    brightness, contrast, saturation = 0.8 + 0.4 * draws
    out = color_jitter(images, brightness, contrast, saturation)
    for i in range(5):
        expected = TF.adjust_saturation(
            TF.adjust_contrast(TF.adjust_brightness(images[i], float(brightness[i])), float(contrast[i])),
            float(saturation[i]),
        )
        torch.testing.assert_close(out[i], expected, atol=2e-6, rtol=0)


def test_seeded_generator_is_reproducible_and_seeds_differ():
    images = batch()
    cfg = AugmentConfig()
    first = augment_batch(images, cfg, torch.Generator().manual_seed(7))
    again = augment_batch(images, cfg, torch.Generator().manual_seed(7))
    other = augment_batch(images, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
