"""Tensor cache: every image decoded, center-cropped and resized once, kept as one uint8 tensor.

The store is ``<cache_dir>/tensors/<fingerprint>.pt``; the fingerprint covers the files (paths
relative to their common folder, sizes, modification times, order) and the resolution, so a changed,
added or removed image, or another ``image_size``, builds a new store. File *contents* are not hashed
(that would read every file on every call); an edit that keeps size and mtime is not noticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fer_ray.core.data.decode import decode_each
from fer_ray.core.data.fingerprint import dataset_fingerprint, tensor_store
from fer_ray.core.data.records import FaceDataset
from fer_ray.core.files import node_cached

__all__ = ["dataset_fingerprint", "decode_images", "load_image_tensors", "tensor_store"]


def load_image_tensors(dataset: FaceDataset, image_size: int, cache_dir: Path | None = None) -> torch.Tensor:
    """All images of ``dataset`` as a uint8 tensor (N, 3, S, S), RGB 0..255, row i = dataset.images[i].

    Each image is center-cropped to a square (KDEF is 562x762 portrait; the face is central) and
    resized to S = ``image_size`` px with antialiasing. The first call on a node decodes and stores
    ``<cache_dir>/tensors/<fingerprint>.pt`` (core.files.node_cached: locked, so concurrent trials
    decode once; written atomically); later calls memory-map it.
    ``cache_dir`` None -> fer_ray.core.files.default_cache_dir().
    Raises DataError naming an unreadable or corrupt image; then no store (nor temp file) is written.
    """
    store = tensor_store(dataset, image_size, cache_dir)
    expected_shape = (len(dataset), 3, image_size, image_size)
    return node_cached(
        store,
        lambda: decode_images([image.path for image in dataset.images], image_size),
        save=lambda images, path: torch.save(images, path),
        load=lambda path: _load_store(path, expected_shape),
    )


def decode_images(paths: list[Path], image_size: int) -> torch.Tensor:
    """Decode, center-crop and resize ``paths`` (decode.decode_square) on a small thread pool ->
    uint8 (N, 3, S, S), RGB 0..255. Raises DataError naming the first file that cannot be decoded.
    """
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)

    def store_row(row: int, square) -> None:
        images[row] = torch.from_numpy(np.array(square, dtype=np.uint8)).permute(2, 0, 1)

    decode_each(paths, image_size, store_row)
    return images


def _load_store(store: Path, expected_shape: tuple[int, ...]) -> torch.Tensor | None:
    """The stored tensor, memory-mapped, or None when absent or unusable (then it is rebuilt).

    torch.save/torch.load(weights_only=True, mmap=True) over a raw np.memmap: the file carries its
    own shape and dtype, loading is safe, and mmap (private, copy-on-write) lets the trials on one
    node share the page cache instead of each holding a copy of the whole store.
    """
    if not store.is_file():
        return None
    try:
        images = torch.load(store, weights_only=True, mmap=True)
    except Exception:  # a store from another torch version or a damaged disk: rebuild it
        return None
    usable = isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    return images if usable and tuple(images.shape) == expected_shape else None
