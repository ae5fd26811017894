"""FGSM epsilon sweep: fer_ray's one-gradient-many-epsilons fgsm_accuracy vs two ways of recomputing
the gradient for every epsilon, on one model and one image set, timed in this process:

  fer_ray  fgsm_accuracy: per batch one input gradient (autograd.grad for the input only; its
           forward pass gives the epsilon-0 logits) and one forward pass per other epsilon;
  (a)      batched, gradient per epsilon: the textbook loop (loss.backward(), which also fills the
           parameters' .grad) run for each epsilon over the same batches;
  (a')     as (a) but asking autograd for the input gradient only (fer_ray's gradient, recomputed
           per epsilon): shows how much of the gain is the reuse alone; printed for information;
  (b)      the reference study's style: one image and one epsilon at a time, as (a) with batches of 1. It is
           timed on the first --seed-style-images images and scaled per image to all of them.

(a), (a') and (b) must give the same adversarial accuracies (the process exits 1 if not). Labels are the
model's own clean predictions, so clean accuracy is 1 and every epsilon has room to lower it.
Everything runs in IEEE float32 (as fer_ray's attacks do; TF32 off on CUDA) on one device.

    python benchmarks/fgsm.py --images 128 --size 64 --arch resnet18

The last two lines are the ratios, e.g. ``ratio fer_ray vs (a) batched gradient per epsilon: 3.9x``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from fer_ray.core.config import ModelConfig
from fer_ray.core.device import pick_device, strict_float32
from fer_ray.core.models import build_model
from fer_ray.core.robustness import fgsm_accuracy

#: The reference study's FGSM grid, in [0,1] pixel units.
SEED_EPSILONS = [0.0, 0.001, 0.005, 0.007, 0.01, 0.05, 0.07, 0.1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", help="torchvision ResNet (random weights)")
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--images", type=int, default=128, help="images in the set")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed-style-images", type=int, default=8, help="images timed for (b)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per path; the fastest is kept")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<index>")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    with strict_float32():  # every path in IEEE float32 (not cuDNN's TF32), as fer_ray's attacks run
        return run(args, device)


def run(args: argparse.Namespace, device: torch.device) -> int:
    """Time the paths, check they agree; the exit status."""
    model, images, labels = make_problem(args.arch, args.size, args.images, device)
    subset = min(args.seed_style_images, args.images)
    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} intra-op threads); {args.arch} "
        f"(random weights), {args.images} images {args.size}x{args.size}, batch {args.batch_size}, "
        f"{len(SEED_EPSILONS)} epsilons {SEED_EPSILONS}; times are the fastest of {args.repeats} runs"
    )

    warm_up(model, images, labels, args.batch_size, device)
    batch, repeats = args.batch_size, args.repeats
    ours_s, ours = timed(device, repeats, lambda: fer_ray_accuracies(model, images, labels, batch, device))
    print(f"fer_ray  one gradient per batch:               {ours_s:8.2f} s")
    batched_s, batched = timed(device, repeats, lambda: per_epsilon_accuracies(model, images, labels, batch))
    print(f"(a)      batched, gradient per epsilon:        {batched_s:8.2f} s")
    input_only_s, input_only = timed(device, repeats, lambda: per_epsilon_accuracies(model, images, labels, batch, input_grad_only=True))
    print(f"(a')     as (a), input gradient only:          {input_only_s:8.2f} s")
    subset_s, seed_style = timed(device, repeats, lambda: per_epsilon_accuracies(model, images[:subset], labels[:subset], 1))
    seed_style_s = subset_s * args.images / subset
    print(
        f"(b)      one image and one epsilon at a time:  {seed_style_s:8.2f} s (measured {subset_s:.2f} s on "
        f"{subset} images, scaled per image to {args.images})"
    )

    print("epsilon  eps*255  accuracy (fer_ray)")
    for epsilon in SEED_EPSILONS:
        print(f"{epsilon:7.3f}  {epsilon * 255:7.3f}  {ours[epsilon].mean():.4f}")
    mismatches = compare(ours, {"(a)": batched, "(a')": input_only, "(b)": seed_style})
    if mismatches:
        print("RESULTS DIFFER:\n  " + "\n  ".join(mismatches))
        return 1
    print(f"all agree: the same correct/incorrect images at every epsilon ((b) on its {subset} images)")
    print(f"(for information) ratio fer_ray vs (a') input gradient only, per epsilon: {input_only_s / ours_s:.1f}x")
    print(f"ratio fer_ray vs (a) batched gradient per epsilon: {batched_s / ours_s:.1f}x")
    print(f"ratio fer_ray vs (b) seed style, per image and epsilon (scaled from {subset} images): {seed_style_s / ours_s:.1f}x")
    return 0


def make_problem(arch: str, size: int, count: int, device: torch.device):
    """Random-weight model in eval mode on device, seeded [0,1] images and their clean predictions."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, weights="none", head=[]), num_classes=7).eval().to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # as fer_ray's training leaves it
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        labels = torch.cat([model(images[s : s + 64]).argmax(dim=1) for s in range(0, count, 64)])
    return model, images, labels


def fer_ray_accuracies(model, images, labels, batch_size, device) -> dict[float, np.ndarray]:
    result = fgsm_accuracy(model, images, labels, SEED_EPSILONS, batch_size=batch_size, device=device)
    return {epsilon: entry["correct"] for epsilon, entry in result.items()}


def per_epsilon_accuracies(model, images, labels, batch_size, input_grad_only=False) -> dict[float, np.ndarray]:
    """The textbook FGSM loop, the gradient recomputed for every epsilon (and every batch).

    input_grad_only: torch.autograd.grad for the input instead of loss.backward() (no weight grads).
    """
    correct = {}
    for epsilon in SEED_EPSILONS:
        flags = []
        for start in range(0, len(labels), batch_size):
            x = images[start : start + batch_size].clone().requires_grad_(True)
            y = labels[start : start + batch_size]
            loss = F.cross_entropy(model(x), y)
            if input_grad_only:
                (gradient,) = torch.autograd.grad(loss, x)
            else:
                model.zero_grad()
                loss.backward()
                gradient = x.grad
            adversarial = torch.clamp(x.detach() + epsilon * gradient.sign(), 0, 1)
            with torch.no_grad():
                flags.append((model(adversarial).argmax(dim=1) == y).cpu().numpy())
        correct[epsilon] = np.concatenate(flags)
    return correct


def warm_up(model, images, labels, batch_size, device) -> None:
    """One small call of each path, so one-off kernel / allocator set-up is timed by none of them."""
    fgsm_accuracy(model, images[:2], labels[:2], [0.01], batch_size=batch_size, device=device)
    per_epsilon_accuracies(model, images[:2], labels[:2], 2)
    per_epsilon_accuracies(model, images[:1], labels[:1], 1)
    model.zero_grad(set_to_none=True)


def timed(device: torch.device, repeats: int, run):
    """(fastest wall time of ``repeats`` runs in s, the last run's result): the minimum is the
    least disturbed by other processes on the machine."""
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times), result


def compare(ours, baselines: dict[str, dict]) -> list[str]:
    """Each epsilon where a baseline classifies some image differently from fer_ray (on the first
    images, as many as the baseline ran on)."""
    mismatches = []
    for epsilon in SEED_EPSILONS:
        for name, other in baselines.items():
            rows = slice(0, len(other[epsilon]))
            differ = np.flatnonzero(ours[epsilon][rows] != other[epsilon])
            if differ.size:
                mismatches.append(
                    f"epsilon {epsilon}: {name} differs on images {differ[:10].tolist()} (accuracy "
                    f"{ours[epsilon][rows].mean():.4f} vs {other[epsilon].mean():.4f})"
                )
    return mismatches


if __name__ == "__main__":
    sys.exit(main())
