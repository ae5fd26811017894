"""Tensor cache: every image decoded, center-cropped and resized once, kept as one uint8 tensor.

The store is ``<cache_dir>/tensors/<fingerprint>.pt``; the fingerprint covers the files (paths
relative to their common folder, sizes, modification times, order) and the resolution, so a changed,
added or removed image, or another ``image_size``, builds a new store. File *contents* are not hashed
(that would read every file on every call); an edit that keeps size and mtime is not noticed.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

from fer_ray.core.data.records import DataError, FaceDataset
from fer_ray.core.files import default_cache_dir, node_cached

#: bump when the decode / crop / resize rule changes, so old stores are not reused
_RESIZE_RULE = "exif-upright+center-square-crop+PIL-draft+bilinear-antialias/v1"
#: decoding threads; PIL releases the GIL while decoding and resizing
_DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
#: EXIF orientation tag -> the transpose that shows the picture upright (as PIL.ImageOps.exif_transpose)
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def dataset_fingerprint(dataset: FaceDataset, image_size: int) -> str:
    """16 hex digits of sha256 over the resize rule, ``image_size`` (px) and, per image in order,
    its path relative to the images' common folder, its size in bytes and its mtime in ns.

    Raises DataError naming a file that cannot be found.
    """
    if len(dataset) == 0:
        raise DataError(f"dataset {dataset.name!r} has no images")
    paths = [Path(image.path).absolute() for image in dataset.images]
    common_root = Path(os.path.commonpath([str(path.parent) for path in paths]))
    digest = hashlib.sha256(f"{_RESIZE_RULE}\nsize={image_size}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as error:
            raise DataError(f"cannot read image file {path}: {error}") from error
        relative = path.relative_to(common_root).as_posix()
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_image_tensors(dataset: FaceDataset, image_size: int, cache_dir: Path | None = None) -> torch.Tensor:
    """All images of ``dataset`` as a uint8 tensor (N, 3, S, S), RGB 0..255, row i = dataset.images[i].

    Each image is center-cropped to a square (KDEF is 562x762 portrait; the face is central) and
    resized to S = ``image_size`` px with antialiasing. The first call on a node decodes and stores
    ``<cache_dir>/tensors/<fingerprint>.pt`` (core.files.node_cached: locked, so concurrent trials
    decode once; written atomically); later calls memory-map it.
    ``cache_dir`` None -> fer_ray.core.files.default_cache_dir().
    Raises DataError naming an unreadable or corrupt image; then no store (nor temp file) is written.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    store = folder / "tensors" / f"{dataset_fingerprint(dataset, image_size)}.pt"
    expected_shape = (len(dataset), 3, image_size, image_size)
    return node_cached(
        store,
        lambda: decode_images([image.path for image in dataset.images], image_size),
        save=lambda images, path: torch.save(images, path),
        load=lambda path: _load_store(path, expected_shape),
    )


def decode_images(paths: list[Path], image_size: int) -> torch.Tensor:
    """Decode, center-crop and resize ``paths`` on a small thread pool -> uint8 (N, 3, S, S).

    Raises DataError naming the first file that cannot be decoded.
    """
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)

    def decode_into(row: int) -> None:
        images[row] = decode_image(paths[row], image_size)

    with ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool:
        list(pool.map(decode_into, range(len(paths))))  # list() re-raises the first DataError
    return images


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """One image file -> uint8 (3, S, S) RGB: center square crop, then antialiased bilinear resize.

    Decoder: PIL with ``draft()``, which lets libjpeg decode at 1/2, 1/4 or 1/8 scale directly
    (DCT scaling). Measured on the 2-core machine over 100 KDEF-size (562x762) JPEGs with 2 threads:
    to 224 px PIL+draft ~750 img/s vs torchvision.io.decode_jpeg + v2 resize ~620-770 img/s (a tie;
    decode_jpeg's batched list form is a sequential loop on CPU, ~400 img/s); to 64 px PIL+draft
    ~1300 vs ~850 img/s. PIL also reads PNG/BMP/... for folder datasets, so PIL it is.
    """
    try:
        with Image.open(path) as opened:
            orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
            drafted = opened.draft("RGB", (image_size, image_size))  # None for non-JPEG files
            image = opened.convert("RGB")
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
        raise DataError(f"cannot decode image {path}: {type(error).__name__}: {error}") from error
    # the decoded picture at draft scale: the file's pixels fill (0, 0, width/scale, height/scale)
    content_width, content_height = drafted[1][2:] if drafted else image.size
    side = min(content_width, content_height)
    left, top = (content_width - side) / 2, (content_height - side) / 2
    # crop to whole pixels around the square first, so the filter cannot reach into the cut-off
    # bands, then resize the exact (sub-pixel) square
    whole = (math.floor(left), math.floor(top), math.ceil(left + side), math.ceil(top + side))
    square = image.crop(whole).resize(
        (image_size, image_size),
        Image.Resampling.BILINEAR,
        box=(left - whole[0], top - whole[1], left - whole[0] + side, top - whole[1] + side),
    )
    # EXIF orientation (phone photos in folder datasets) commutes with a center square crop + resize
    if orientation in _EXIF_TRANSPOSE:
        square = square.transpose(_EXIF_TRANSPOSE[orientation])
    return torch.from_numpy(np.array(square, dtype=np.uint8)).permute(2, 0, 1)


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
