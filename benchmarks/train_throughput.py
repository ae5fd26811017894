"""Fine-tuning throughput: images/s of fit()'s own training step, against a plain-fp32 baseline.

    python benchmarks/train_throughput.py --arch resnet50 --image-size 224 --batch-size 32 --steps 20 --warmup 5

Runs fer_ray.core.train.train_step (the function fit() calls for every batch: uint8 -> [0,1] float,
batched augmentation, forward, cross-entropy, backward, optimizer step) on random uint8 images that
already sit on the device, all backbone blocks trainable, AdamW. Warm-up steps are not timed.
On CUDA the measured step uses what fit() uses there (bf16 autocast + channels_last) and the
baseline is the same step in plain fp32 with contiguous tensors; peak GPU memory is printed for
both. On CPU fit() uses plain fp32 too, so there is one measurement and the ratio is 1.0x.
"""

from __future__ import annotations

import argparse
import time

import torch

from fer_ray.core.config import AugmentConfig, ModelConfig, TrainConfig
from fer_ray.core.device import pick_device
from fer_ray.core.models import build_model, count_parameters
from fer_ray.core.train import StepOptions, make_optimizer, train_step


def measure(args: argparse.Namespace, device: torch.device, options: StepOptions) -> tuple[float, int | None]:
    """(images per second over args.steps timed steps, peak CUDA bytes allocated or None on CPU)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=args.arch, weights="none", trainable="all"), num_classes=7).to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, TrainConfig())
    augment = AugmentConfig(enabled=not args.no_augment)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(
        0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, device=device, generator=generator
    )
    labels = torch.randint(0, 7, (args.batch_size,), device=device, generator=generator)

    for _ in range(args.warmup):
        train_step(model, optimizer, images, labels, augment=augment, generator=generator, options=options)
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = train_step(model, optimizer, images, labels, augment=augment, generator=generator, options=options)
    loss.item()  # waits for the device
    _synchronize(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return args.batch_size * args.steps / elapsed, peak


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(peak: int | None) -> str:
    return "" if peak is None else f"  (peak GPU memory {peak / 2**30:.2f} GiB)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<index>")
    parser.add_argument("--no-augment", action="store_true", help="time the step without augmentation")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps}, {args.warmup})")

    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    params = count_parameters(build_model(ModelConfig(arch=args.arch, weights="none"), num_classes=7))
    print(f"device: {device} ({name}), torch {torch.__version__}")
    print(
        f"model: {args.arch} ({params['total'] / 1e6:.1f} M parameters, all trainable), {args.image_size} px, "
        f"batch {args.batch_size}, augmentation {'off' if args.no_augment else 'on'}, AdamW; "
        f"{args.warmup} warm-up + {args.steps} timed steps"
    )

    fit_options = StepOptions.for_device(device)
    fit_rate, fit_peak = measure(args, device, fit_options)
    if fit_options == StepOptions(bf16=False, channels_last=False):
        print(f"fit() step (fp32, contiguous; the baseline itself on {device.type}): {fit_rate:.1f} images/s{_memory(fit_peak)}")
        print("ratio vs plain fp32: 1.00x")
        return
    base_rate, base_peak = measure(args, device, StepOptions(bf16=False, channels_last=False))
    print(f"fit() step (bf16 autocast + channels_last): {fit_rate:.1f} images/s{_memory(fit_peak)}")
    print(f"baseline (fp32, contiguous): {base_rate:.1f} images/s{_memory(base_peak)}")
    print(f"ratio vs plain fp32: {fit_rate / base_rate:.2f}x")


if __name__ == "__main__":
    main()
