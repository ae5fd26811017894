"""Which tensor-cache store a dataset's decoded images live in (no torch: --dry-run asks whether the
store is already built without loading it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fer_ray.core.data.records import DataError, FaceDataset
from fer_ray.core.files import default_cache_dir

#: bump when the decode / crop / resize rule changes, so old stores are not reused
RESIZE_RULE = "exif-upright+center-square-crop+PIL-draft+bilinear-antialias/v1"


def dataset_fingerprint(dataset: FaceDataset, image_size: int) -> str:
    """16 hex digits of sha256 over the resize rule, ``image_size`` (px) and, per image in order,
    its path relative to the images' common folder, its size in bytes and its mtime in ns.

    Raises DataError naming a file that cannot be found.
    """
    if len(dataset) == 0:
        raise DataError(f"dataset {dataset.name!r} has no images")
    paths = [Path(image.path).absolute() for image in dataset.images]
    common_root = Path(os.path.commonpath([str(path.parent) for path in paths]))
    digest = hashlib.sha256(f"{RESIZE_RULE}\nsize={image_size}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as error:
            raise DataError(f"cannot read image file {path}: {error}") from error
        relative = path.relative_to(common_root).as_posix()
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def tensor_store(dataset: FaceDataset, image_size: int, cache_dir: Path | None = None) -> Path:
    """``<cache_dir>/tensors/<fingerprint>.pt``: where cache.load_image_tensors keeps ``dataset``
    decoded at ``image_size`` px (cache_dir None -> fer_ray.core.files.default_cache_dir())."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / "tensors" / f"{dataset_fingerprint(dataset, image_size)}.pt"
