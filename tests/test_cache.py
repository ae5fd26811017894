"""Tensor cache: decode once, keyed by the files' fingerprint; atomic, and loud about bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from fer_ray.core.data.cache import dataset_fingerprint, load_image_tensors
from fer_ray.core.data.records import DataError, FaceDataset, FaceImage


def smooth_picture(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth RGB uint8 picture (H, W, 3): blurred noise, so resampling methods agree closely."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 5, 3)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))


def write_faces(folder: Path, count: int = 6, width: int = 112, height: int = 152) -> FaceDataset:
    """``count`` portrait JPEGs (KDEF's aspect) under folder/sub/ and their dataset."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        path = folder / "sub" / f"face{i}.jpg"
        Image.fromarray(smooth_picture(width, height, seed=i)).save(path, quality=95)
        images.append(FaceImage(path=path, expression="happy", identity=f"P{i}"))
    return FaceDataset(name="faces", images=tuple(images))


def reference_decode(path: Path, size: int) -> torch.Tensor:
    """Plain PIL: full decode, center square crop, antialiased bilinear resize -> uint8 (3, S, S)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(square)).permute(2, 0, 1)


def files_under(folder: Path) -> list[Path]:
    """The cache's files, without the lock files that serialise its writers (core.files.node_cached)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock")


def test_first_call_stores_second_call_reads_the_store(tmp_path, cache_dir):
    dataset = write_faces(tmp_path / "data")
    first = load_image_tensors(dataset, 32, cache_dir)

    assert first.dtype == torch.uint8 and first.shape == (6, 3, 32, 32)
    store = cache_dir / "tensors" / f"{dataset_fingerprint(dataset, 32)}.pt"
    assert files_under(cache_dir) == [store]
    written_at = store.stat().st_mtime_ns

    # Garble one file but keep its size and mtime: the fingerprint is unchanged, so a cache hit
    # returns the stored pixels, while a fresh decode would fail on this file.
    victim = dataset.images[2].path
    stat = victim.stat()
    victim.write_bytes(b"\0" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_image_tensors(dataset, 32, cache_dir)

    assert torch.equal(first, second)
    assert store.stat().st_mtime_ns == written_at and files_under(cache_dir) == [store]


def test_changing_an_image_changes_the_fingerprint_and_rebuilds(tmp_path, cache_dir):
    dataset = write_faces(tmp_path / "data")
    before = load_image_tensors(dataset, 32, cache_dir)
    old_fingerprint = dataset_fingerprint(dataset, 32)

    changed = dataset.images[4].path
    Image.fromarray(np.full((152, 112, 3), 255, dtype=np.uint8)).save(changed, quality=95)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new_fingerprint = dataset_fingerprint(dataset, 32)
    after = load_image_tensors(dataset, 32, cache_dir)

    assert new_fingerprint != old_fingerprint
    assert (cache_dir / "tensors" / f"{new_fingerprint}.pt").is_file()
    assert torch.equal(after[[0, 1, 2, 3, 5]], before[[0, 1, 2, 3, 5]])
    assert (after[4] >= 250).all() and not torch.equal(after[4], before[4])


def test_fingerprint_depends_on_resolution_and_order_not_on_the_absolute_folder(tmp_path):
    here = write_faces(tmp_path / "here", count=3)
    there = write_faces(tmp_path / "there", count=3)
    for image_here, image_there in zip(here.images, there.images):  # same sizes; align mtimes
        stat = image_here.path.stat()
        os.utime(image_there.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert dataset_fingerprint(here, 32) == dataset_fingerprint(there, 32)
    assert dataset_fingerprint(here, 32) != dataset_fingerprint(here, 48)
    reversed_order = FaceDataset(name="faces", images=here.images[::-1])
    assert dataset_fingerprint(reversed_order, 32) != dataset_fingerprint(here, 32)


def test_pixels_match_a_direct_pil_decode_crop_and_resize(tmp_path, cache_dir):
    dataset = write_faces(tmp_path / "data", count=2, width=281, height=381)
    images = load_image_tensors(dataset, 64, cache_dir)  # JPEG draft decodes at 1/4 scale here

    for row, image in enumerate(dataset.images):
        reference = reference_decode(image.path, 64).float()
        difference = (images[row].float() - reference).abs()
        assert difference.mean() < 1.0 and difference.max() <= 6, (difference.mean(), difference.max())


def test_exif_orientation_is_applied(tmp_path, cache_dir):
    picture = Image.fromarray(smooth_picture(96, 128, seed=3))
    upright, sideways = tmp_path / "upright.jpg", tmp_path / "sideways.jpg"
    picture.save(upright, quality=95)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    picture.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95, exif=exif)
    records = tuple(FaceImage(path=p, expression="sad") for p in (upright, sideways))
    dataset = FaceDataset(name="exif", images=records)

    images = load_image_tensors(dataset, 32, cache_dir).float()

    assert (images[0] - images[1]).abs().mean() < 2.0
    assert (images[0] - images[1].flip(-1)).abs().mean() > 10.0  # the picture is not symmetric


def test_portrait_and_landscape_images_are_center_cropped(tmp_path, cache_dir):
    # blue square in the middle, red bands where the crop must cut: any red in the output is an error
    portrait = np.zeros((90, 40, 3), dtype=np.uint8)
    portrait[:, :] = (255, 0, 0)
    portrait[25:65, :] = (0, 0, 255)
    paths = [tmp_path / "portrait.png", tmp_path / "landscape.png"]
    Image.fromarray(portrait).save(paths[0])
    Image.fromarray(portrait.transpose(1, 0, 2).copy()).save(paths[1])
    dataset = FaceDataset(name="crops", images=tuple(FaceImage(path=p, expression="sad") for p in paths))

    images = load_image_tensors(dataset, 20, cache_dir)

    assert (images[:, 2] == 255).all() and (images[:, 0] == 0).all()


def test_corrupt_image_is_a_data_error_naming_it_and_nothing_is_cached(tmp_path, cache_dir):
    dataset = write_faces(tmp_path / "data")
    bad = dataset.images[3].path
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG

    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        load_image_tensors(dataset, 32, cache_dir)
    assert files_under(cache_dir) == []


def test_missing_image_is_a_data_error_naming_it(tmp_path, cache_dir):
    dataset = write_faces(tmp_path / "data", count=2)
    gone = dataset.images[1].path
    gone.unlink()

    with pytest.raises(DataError, match=f"cannot read image file {gone}"):
        load_image_tensors(dataset, 32, cache_dir)
    assert files_under(cache_dir) == []


def test_no_cache_dir_means_the_default_cache_folder(tmp_path, monkeypatch):
    dataset = write_faces(tmp_path / "data", count=2)
    monkeypatch.setenv("FER_RAY_CACHE", str(tmp_path / "default-cache"))

    load_image_tensors(dataset, 16)

    assert files_under(tmp_path / "default-cache") == [tmp_path / "default-cache" / "tensors" / f"{dataset_fingerprint(dataset, 16)}.pt"]
