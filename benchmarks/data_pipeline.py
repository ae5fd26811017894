"""Training-epoch throughput: fer_ray's tensor cache + batched augmentation vs the usual torchvision
ImageFolder + per-image PIL transforms + DataLoader(num_workers=2).

Both read the same KDEF-size (562x762) JPEGs, produce 224x224 float batches in [0,1] with the same
augmentations (rotation +-10 deg, horizontal flip, brightness/contrast/saturation 0.2), and are timed
over one full epoch in this process:

  fer_ray   an epoch after the tensor cache is built (its one-off build time is printed too),
            loading the store included;
  baseline  a warm epoch (persistent workers already started), which favours the baseline.

Each is timed --repeats times, interleaved, and the medians are compared (the 2-core machine is
shared, so single epochs are noisy). --device cuda augments on the GPU, as a trial does there.

    python benchmarks/data_pipeline.py --images 300

The last line is the ratio, e.g. ``ratio fer_ray/baseline: 7.3x``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageChops, ImageOps
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from fer_ray.core.config import AugmentConfig, SyntheticConfig
from fer_ray.core.data.augment import augment_batch
from fer_ray.core.data.cache import load_image_tensors
from fer_ray.core.data.folder import read_image_folder
from fer_ray.core.data.kdef import parse_kdef_name
from fer_ray.core.data.synthetic import generate_synthetic_kdef

KDEF_WIDTH, KDEF_HEIGHT = 562, 762
#: rendering a 562x762 synthetic face takes ~0.17 s; beyond this many, shifted/mirrored re-encodes
#: of them fill the folder (decode cost is what matters, and every file is still a distinct JPEG)
UNIQUE_FACES = 56


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="JPEGs in the epoch")
    parser.add_argument("--size", type=int, default=224, help="training resolution in px")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per pipeline (median)")
    parser.add_argument("--device", default="cpu", help="where fer_ray augments (cpu, cuda, ...)")
    args = parser.parse_args()
    augment = AugmentConfig(rotation_deg=10.0, hflip=True, brightness=0.2, contrast=0.2, saturation=0.2)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; {args.images} JPEGs "
        f"{KDEF_WIDTH}x{KDEF_HEIGHT} -> {args.size}px, batch {args.batch_size}, fer_ray on {args.device}"
    )

    with tempfile.TemporaryDirectory(prefix="fer_ray_bench_") as scratch:
        started = time.perf_counter()
        root = write_kdef_size_folder(Path(scratch) / "images", args.images)
        print(f"wrote {args.images} JPEGs in {time.perf_counter() - started:.1f} s")

        dataset = read_image_folder(root)
        started = time.perf_counter()
        load_image_tensors(dataset, args.size, Path(scratch) / "cache")
        build_s = time.perf_counter() - started
        print(f"fer_ray  cache build (one-off): {build_s:.2f} s ({args.images / build_s:.0f} images/s)")

        baseline_loader = make_baseline_loader(root, args.size, args.batch_size, args.workers, augment)
        time_epoch(baseline_loader)  # warm-up: starts the persistent workers
        time_fer_ray_epoch(dataset, Path(scratch) / "cache", args, augment)  # warm-up (CUDA context)
        fer_ray_s, baseline_s = [], []
        for _ in range(args.repeats):  # interleaved, so a load spike from elsewhere hits both
            fer_ray_s.append(time_fer_ray_epoch(dataset, Path(scratch) / "cache", args, augment))
            baseline_s.append(time_epoch(baseline_loader))
        fer_ray_epoch, baseline_epoch = statistics.median(fer_ray_s), statistics.median(baseline_s)
        print(
            f"fer_ray  epoch (median of {args.repeats}): {fer_ray_epoch:.2f} s -> "
            f"{args.images / fer_ray_epoch:.0f} images/s  [{spread(fer_ray_s, args.images)}]"
        )
        print(
            f"baseline epoch (ImageFolder + PIL transforms, {args.workers} workers, median of "
            f"{args.repeats}): {baseline_epoch:.2f} s -> {args.images / baseline_epoch:.0f} images/s  "
            f"[{spread(baseline_s, args.images)}]"
        )
    print(f"ratio fer_ray/baseline: {baseline_epoch / fer_ray_epoch:.1f}x")


def spread(seconds: list[float], images: int) -> str:
    return ", ".join(f"{images / s:.0f}" for s in seconds) + " images/s"


def write_kdef_size_folder(root: Path, count: int) -> Path:
    """``count`` 562x762 JPEG faces as root/<expression>/<name>.JPG (the ImageFolder layout)."""
    people = max(2, math.ceil(min(count, UNIQUE_FACES) / 28))  # 2 sessions x 2 genders x 7 expressions
    rendered = Path(tempfile.mkdtemp(dir=root.parent, prefix="rendered_"))
    kdef_size = SyntheticConfig(identities=people, width=KDEF_WIDTH, height=KDEF_HEIGHT)
    generate_synthetic_kdef(rendered, kdef_size)
    faces = sorted(rendered.rglob("*.JPG"))
    for index in range(count):
        source = faces[index % len(faces)]
        expression = parse_kdef_name(source.name).expression
        (root / expression).mkdir(parents=True, exist_ok=True)
        with Image.open(source) as face:
            copy_number = index // len(faces)
            if copy_number:  # a different picture: shifted a few px, mirrored every other round
                face = ImageChops.offset(face.convert("RGB"), 3 * copy_number, 2 * copy_number)
                face = ImageOps.mirror(face) if copy_number % 2 else face
            face.save(root / expression / f"{index:05d}_{source.name}", quality=92)
    return root


def time_fer_ray_epoch(dataset, cache_dir: Path, args, augment: AugmentConfig) -> float:
    """Seconds of one epoch from the cache: load the store (a cache hit, as every later trial), then
    shuffled batches of the uint8 tensor -> float [0,1] on ``args.device`` -> augment_batch."""
    device = torch.device(args.device)
    started = time.perf_counter()
    images = load_image_tensors(dataset, args.size, cache_dir).to(device)
    labels = torch.from_numpy(dataset.labels).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(dataset), generator=generator, device=device)
    checksum = torch.zeros((), device=device)
    for batch_rows in order.split(args.batch_size):
        batch = augment_batch(images[batch_rows].float().div_(255.0), augment, generator)
        checksum += batch[:, :, 0, 0].sum() + labels[batch_rows].sum()
    float(checksum)  # waits for the device
    return time.perf_counter() - started


def make_baseline_loader(root: Path, size: int, batch_size: int, workers: int, augment: AugmentConfig):
    """The usual pipeline: ImageFolder + per-image PIL transforms + DataLoader (persistent workers)."""
    pipeline = transforms.Compose(
        [
            transforms.Resize(size),  # shorter side to 224 first: the cheaper, usual order
            transforms.CenterCrop(size),
            transforms.RandomRotation(augment.rotation_deg),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(augment.brightness, augment.contrast, augment.saturation),
            transforms.ToTensor(),
        ]
    )
    return DataLoader(
        datasets.ImageFolder(str(root), transform=pipeline),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def time_epoch(loader) -> float:
    """Seconds to draw every batch of ``loader`` once."""
    started = time.perf_counter()
    checksum = 0.0
    for batch, labels in loader:
        checksum += float(batch[:, :, 0, 0].sum()) + float(labels.sum())
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
