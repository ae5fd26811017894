"""How a trained FER network holds up under Gaussian noise and adversarial attacks (FGSM, PGD).

Units: images are float (N, 3, H, W) in [0,1] before normalisation (uint8 0..255 is accepted and
divided by 255); noise variance / sigma and the attack radius epsilon live in that same [0,1] pixel
space (epsilon 0.01 is 2.55 grey levels). Normalisation sits inside the model (FerNet), so noise
and attacks never see normalised tensors. Every function puts the model in eval mode for the call
and restores its previous mode afterwards; parameters' ``.grad`` are never touched.

Seeded randomness is per image: image ``i`` of a call (``first_index + i`` of the whole set) draws
from its own CPU ``torch.Generator`` seeded by (seed, image index, stream), so the same seed gives
the same noise on any device and at any batch size, and two models can be compared on identical
noise. Gaussian noise and PGD's random start use different streams.

Precision: attacks (gradients and the adversarial predictions) run in float32 on every device, TF32
off for their duration (device.strict_float32; this torch's cuDNN default is TF32). Under
bf16 autocast the first convolution would round the normalised input to 8 mantissa bits (a step of
~0.004 in pixel units near white), which swallows the reference study's smallest epsilons (0.001, 0.005).
Noise evaluation reuses ``evaluate.predict_logits`` (bf16 autocast on CUDA), as clean evaluation does;
the reference study's variances (0.1 and around) are far above that resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_ray.core.device import model_device, strict_float32, use_channels_last
from fer_ray.core.evaluate import as_float_images, eval_mode, predict_logits

#: Generator streams: one per kind of random draw, so noise and PGD starts are independent.
NOISE_STREAM, PGD_START_STREAM = 0, 1
#: How many of the most probable classes ``return_examples`` reports per image.
TOP_K = 3


class RobustnessError(ValueError):
    """Bad input to a robustness function; the message names the argument and its value."""


class EpsilonError(RobustnessError):
    """An attack radius outside [0, 1] (the [0,1] pixel space) or not a finite number."""


class VarianceError(RobustnessError):
    """A noise variance or sigma that is negative or not a finite number."""


# ----------------------------------------------------------------------------------------------
# Gaussian noise
# ----------------------------------------------------------------------------------------------


def variance_to_sigma(variance: float) -> float:
    """Standard deviation of noise with this variance (both in [0,1] pixel units)."""
    return math.sqrt(_checked_variance(variance))


def sigma_to_variance(sigma: float) -> float:
    """Variance of noise with this standard deviation (both in [0,1] pixel units)."""
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise VarianceError(f"noise sigma must be a finite number >= 0, got {sigma}")
    return sigma * sigma


def standard_normal_noise(shape: Sequence[int], seed: int, first_index: int = 0, stream: int = NOISE_STREAM) -> torch.Tensor:
    """N(0, 1) draws, float32 ``shape`` = (N, ...) on the CPU, one generator per image.

    Row ``i`` comes from a CPU generator seeded by (seed, first_index + i, stream), so it depends
    on neither N nor the device: drawing images 0..9 at once equals drawing 0..4 and then 5..9
    with first_index=5.
    """
    return _per_image_draws(torch.randn, shape, seed, first_index, stream)


def add_gaussian_noise(images: torch.Tensor, variance: float, seed: int, first_index: int = 0) -> torch.Tensor:
    """images + N(0, variance), clipped to [0,1]: float (N, 3, H, W) on images' device.

    images: float [0,1] or uint8 0..255 (N, 3, H, W). variance in [0,1] pixel units (sigma =
    sqrt(variance)). The noise is ``sigma * standard_normal_noise(images.shape, seed, first_index)``:
    drawn on the CPU, then moved to images.device, so it is the same on every device and for every
    batching (pass ``first_index`` = the batch's offset in the whole set). Different variances at
    one seed scale the same draws (common random numbers).
    """
    sigma = variance_to_sigma(variance)
    images = as_float_images(images)
    unit_noise = standard_normal_noise(images.shape, seed, first_index)
    return _noisy(images, sigma, unit_noise)


def noisy_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    variances: Sequence[float],
    seed: int,
    batch_size: int = 128,
    device: torch.device | None = None,
) -> dict[float, dict]:
    """Accuracy of ``model`` on ``add_gaussian_noise(images, variance, seed)`` for each variance.

    images: uint8 (N, 3, H, W) 0..255 or float [0,1]; labels: int (N,). Returns
    {variance: {"accuracy": float, "correct": bool numpy (N,)}} in the order given; "correct" is
    per image (for McNemar / bootstrap). Image i gets the same noise whatever batch_size is; one
    draw per image serves every variance. device: see evaluate.predict_logits.
    """
    sigmas = {float(v): variance_to_sigma(v) for v in variances}
    labels = _checked_labels(images, labels)
    device = device or model_device(model)
    correct = {variance: np.zeros(len(labels), dtype=bool) for variance in sigmas}
    for start, batch, batch_labels in _batches(images, labels, batch_size, device):
        unit_noise = standard_normal_noise(batch.shape, seed, first_index=start).to(device)
        for variance, sigma in sigmas.items():
            logits = predict_logits(model, _noisy(batch, sigma, unit_noise), len(batch), device)
            correct[variance][start : start + len(batch)] = (logits.argmax(dim=1) == batch_labels.cpu()).numpy()
    return {variance: _accuracy_entry(flags) for variance, flags in correct.items()}


# ----------------------------------------------------------------------------------------------
# FGSM
# ----------------------------------------------------------------------------------------------


def input_gradient_sign(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sign(d loss / d images): float (N, 3, H, W) with values in {-1, 0, 1}, on images' device.

    loss = cross-entropy of the true labels, summed over the batch (so each image's gradient is its
    own loss's, whatever the batch). images: float [0,1] or uint8 (N, 3, H, W) on the model's
    device; labels: int (N,). Computed in float32 in eval mode.
    """
    labels = _checked_labels(images, labels).to(images.device)
    with eval_mode(model), strict_float32():
        return _loss_gradient_sign(model, as_float_images(images), labels)


def fgsm_perturb(images: torch.Tensor, gradient_sign: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGSM images clip(images + epsilon * gradient_sign, 0, 1): float (N, 3, H, W).

    images float [0,1]; gradient_sign from input_gradient_sign; epsilon in [0,1] pixel units.
    """
    epsilon = _checked_epsilon(epsilon)
    return (images + epsilon * gradient_sign).clamp(0.0, 1.0)


def fgsm_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float],
    batch_size: int = 128,
    device: torch.device | None = None,
    return_examples: int = 0,
) -> dict[float, dict]:
    """Accuracy of ``model`` under FGSM at every epsilon, with one gradient per batch.

    images: uint8 (N, 3, H, W) 0..255 or float [0,1]; labels: int (N,); epsilons in [0,1] pixel
    units (epsilon 0 gives the clean accuracy). Returns {epsilon: {"accuracy": float, "correct":
    bool numpy (N,)}} in the order given. With return_examples=k > 0 each entry also holds the first
    k images' "examples": float32 (k, 3, H, W) adversarial images on the CPU, "top3_classes": int64
    (k, 3) and "top3_probs": float32 (k, 3), most probable first. device: default the model's own;
    a model elsewhere is moved there (in place). Float32, eval mode. Cost per batch: one forward +
    input-only backward pass (whose logits serve epsilon 0) and one forward pass per other epsilon.
    """
    epsilons = [_checked_epsilon(e) for e in epsilons]
    labels = _checked_labels(images, labels)
    device = device or model_device(model)
    model.to(device)
    tally = _AttackTally(epsilons, len(labels), return_examples)
    with eval_mode(model), strict_float32():
        for start, batch, batch_labels in _batches(images, labels, batch_size, device):
            # Hand-written rather than captum.robust.FGSM: its perturb() recomputes the gradient on
            # every call, i.e. once per epsilon; the sign is the same for every epsilon, so one
            # backward pass per batch serves them all.
            gradient_sign, clean_logits = _loss_gradient_sign_and_logits(model, batch, batch_labels)
            for epsilon in epsilons:
                adversarial = fgsm_perturb(batch, gradient_sign, epsilon)
                # epsilon 0 leaves the batch as it is, so the gradient pass's logits are its logits
                logits = clean_logits if epsilon == 0 else _fp32_logits(model, adversarial)
                tally.add(epsilon, start, adversarial, logits, batch_labels)
    return tally.result()


# ----------------------------------------------------------------------------------------------
# PGD
# ----------------------------------------------------------------------------------------------


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    seed: int = 0,
    first_index: int = 0,
) -> torch.Tensor:
    """L-infinity PGD (Madry et al.): float (N, 3, H, W) adversarial images on images' device.

    Starting from the images (or, with random_start, a uniform point of the eps-ball drawn per
    image from seed and first_index + i, clipped to [0,1]), ``steps`` times: step ``step_size``
    (default 2.5 * eps / steps) along the sign of the loss gradient (cross-entropy of the true
    labels), then project onto the eps-ball around the images and onto [0,1]. images: float [0,1]
    or uint8 (N, 3, H, W) on the model's device; labels int (N,); eps in [0,1] pixel units.
    Float32, eval mode.
    """
    eps = _checked_epsilon(eps)
    step_size = _checked_pgd_step(eps, steps, step_size)
    labels = _checked_labels(images, labels).to(images.device)
    with eval_mode(model), strict_float32():
        return _pgd(model, as_float_images(images), labels, eps, steps, step_size, random_start, seed, first_index)


def pgd_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilons: Sequence[float],
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | None = None,
    return_examples: int = 0,
) -> dict[float, dict]:
    """Accuracy of ``model`` under pgd_attack at every epsilon; the result as fgsm_accuracy's.

    step_size None means 2.5 * epsilon / steps for each epsilon. Random starts are drawn per image
    (seed, image index), so they do not depend on batch_size.
    """
    epsilons = [_checked_epsilon(e) for e in epsilons]
    step_sizes = {epsilon: _checked_pgd_step(epsilon, steps, step_size) for epsilon in epsilons}
    labels = _checked_labels(images, labels)
    device = device or model_device(model)
    model.to(device)
    tally = _AttackTally(epsilons, len(labels), return_examples)
    with eval_mode(model), strict_float32():
        for start, batch, batch_labels in _batches(images, labels, batch_size, device):
            for epsilon in epsilons:
                adversarial = _pgd(model, batch, batch_labels, epsilon, steps, step_sizes[epsilon], random_start, seed, start)
                tally.add(epsilon, start, adversarial, _fp32_logits(model, adversarial), batch_labels)
    return tally.result()


def _pgd(model, images, labels, eps, steps, step_size, random_start, seed, first_index) -> torch.Tensor:
    # Hand-written rather than captum.robust.PGD: captum draws its random start from the global RNG
    # (no per-image seeding) and steps only where |gradient| > 1e-6 instead of along the sign.
    if eps == 0:
        return images.clone()
    adversarial = images
    if random_start:
        uniform = _per_image_draws(torch.rand, images.shape, seed, first_index, PGD_START_STREAM)
        adversarial = (images + eps * (2 * uniform.to(images.device) - 1)).clamp(0.0, 1.0)
    lower, upper = (images - eps).clamp(min=0.0), (images + eps).clamp(max=1.0)
    for _ in range(steps):
        adversarial = adversarial + step_size * _loss_gradient_sign(model, adversarial, labels)
        adversarial = torch.maximum(torch.minimum(adversarial, upper), lower)
    return adversarial.detach()


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


class _AttackTally:
    """Per-epsilon correctness of every image, plus the first k images' adversarial examples."""

    def __init__(self, epsilons: list[float], n_images: int, return_examples: int):
        if return_examples < 0:
            raise RobustnessError(f"return_examples must be >= 0, got {return_examples}")
        self.examples_wanted = min(int(return_examples), n_images)
        self.correct = {epsilon: np.zeros(n_images, dtype=bool) for epsilon in epsilons}
        self.examples: dict[float, list[tuple[torch.Tensor, torch.Tensor]]] = {e: [] for e in epsilons}

    def add(self, epsilon: float, start: int, adversarial: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
        """Record one batch: adversarial (B, 3, H, W), CPU logits (B, C), labels (B,)."""
        self.correct[epsilon][start : start + len(labels)] = (logits.argmax(dim=1) == labels.cpu()).numpy()
        wanted = self.examples_wanted - start
        if wanted > 0:
            self.examples[epsilon].append((adversarial[:wanted].detach().float().cpu(), logits[:wanted].softmax(dim=1)))

    def result(self) -> dict[float, dict]:
        """{epsilon: {"accuracy", "correct"[, "examples", "top3_classes", "top3_probs"]}}."""
        result = {}
        for epsilon, flags in self.correct.items():
            result[epsilon] = _accuracy_entry(flags)
            if self.examples_wanted:
                images = torch.cat([images for images, _ in self.examples[epsilon]])
                probs = torch.cat([probs for _, probs in self.examples[epsilon]])
                top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
                result[epsilon].update(examples=images, top3_classes=top.indices, top3_probs=top.values)
        return result


def _loss_gradient_sign(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sign of d(summed cross-entropy)/d images; the model is already in eval mode."""
    return _loss_gradient_sign_and_logits(model, images, labels)[0]


def _loss_gradient_sign_and_logits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """(sign of d(summed cross-entropy)/d images on images' device, float32 CPU logits (B, C))."""
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(_layout(inputs)).float()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        # autograd.grad for the input only: parameters' weight gradients are neither computed nor stored.
        (gradient,) = torch.autograd.grad(loss, inputs)
    return gradient.sign(), logits.detach().cpu()


@torch.no_grad()
def _fp32_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float32 logits (B, C) on the CPU; the model is already in eval mode and on images' device."""
    return model(_layout(images)).float().cpu()


def _noisy(images: torch.Tensor, sigma: float, unit_noise: torch.Tensor) -> torch.Tensor:
    return (images + sigma * unit_noise.to(images.device, images.dtype)).clamp(0.0, 1.0)


def _per_image_draws(draw, shape: Sequence[int], seed: int, first_index: int, stream: int) -> torch.Tensor:
    """``draw`` (torch.randn / torch.rand) of shape[1:] per image from a per-image CPU generator."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RobustnessError(f"seed must be an int >= 0, got {seed!r}")
    shape = tuple(int(s) for s in shape)
    rows = []
    for index in range(first_index, first_index + shape[0]):
        # SeedSequence mixes (seed, index, stream) into well-separated 64-bit generator seeds.
        words = np.random.SeedSequence([int(seed), index, stream]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator(device="cpu").manual_seed((int(words[0]) << 32) | int(words[1]))
        rows.append(draw(shape[1:], generator=generator, dtype=torch.float32))
    return torch.stack(rows) if rows else torch.empty(shape, dtype=torch.float32)


def _batches(images, labels, batch_size: int, device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(start, float [0,1] images on device, labels on device) for consecutive batches."""
    if batch_size < 1:
        raise RobustnessError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(labels), batch_size):
        batch = as_float_images(images[start : start + batch_size].to(device, non_blocking=True))
        yield start, batch, labels[start : start + batch_size].to(device)


def _layout(images: torch.Tensor) -> torch.Tensor:
    if use_channels_last(images.device):
        return images.contiguous(memory_format=torch.channels_last)
    return images


def _accuracy_entry(correct: np.ndarray) -> dict:
    return {"accuracy": float(correct.mean()) if len(correct) else float("nan"), "correct": correct}


def _checked_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and 0.0 <= epsilon <= 1.0):
        raise EpsilonError(
            f"epsilon {epsilon} is outside [0, 1]: epsilon is in the [0,1] pixel space (epsilon * 255 = {epsilon * 255:g} grey levels)"
        )
    return epsilon


def _checked_variance(variance: float) -> float:
    variance = float(variance)
    if not (math.isfinite(variance) and variance >= 0.0):
        raise VarianceError(f"noise variance must be a finite number >= 0 (in [0,1] pixel units), got {variance}")
    return variance


def _checked_pgd_step(eps: float, steps: int, step_size: float | None) -> float:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise RobustnessError(f"PGD steps must be an int >= 1, got {steps!r}")
    if step_size is None:
        return 2.5 * eps / steps
    if not (math.isfinite(step_size) and step_size > 0):
        raise RobustnessError(f"PGD step_size must be a finite number > 0, got {step_size}")
    return float(step_size)


def _checked_labels(images: torch.Tensor, labels) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    if images.ndim != 4:
        raise RobustnessError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise RobustnessError(
            f"labels must be (N,) = ({images.shape[0]},) to match images {tuple(images.shape)}, got shape {tuple(labels.shape)}"
        )
    return labels
