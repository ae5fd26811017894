"""prepare_data: config in, cached tensors split by person (or by image) out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fer_ray.core.config import DataConfig, SplitConfig, SyntheticConfig
from fer_ray.core.data.cache import dataset_fingerprint, load_image_tensors
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.data.records import DataError
from fer_ray.core.data.splits import training_subset


def synthetic_cfg(root, cache_dir, **changes) -> DataConfig:
    return DataConfig(
        dataset="synthetic",
        root=root,
        image_size=32,
        cache_dir=cache_dir,
        synthetic=SyntheticConfig(identities=12, width=64, height=88),
        **changes,
    )


def test_prepared_sides_are_rows_of_the_cached_tensor_split_by_person(synthetic_root, cache_dir):
    prepared = prepare_data(synthetic_cfg(synthetic_root, cache_dir))
    dataset = prepared.dataset

    assert prepared.protocol == "subject-disjoint"
    assert len(dataset) == 24 * 2 * 7
    assert prepared.fingerprint == dataset_fingerprint(dataset, 32)
    assert (cache_dir / "tensors" / f"{prepared.fingerprint}.pt").is_file()
    everything = load_image_tensors(dataset, 32, cache_dir)
    sides = (prepared.train, prepared.val, prepared.test)
    for side, rows in zip(sides, (prepared.split.train, prepared.split.val, prepared.split.test)):
        assert side.images.dtype == torch.uint8 and side.images.shape == (len(rows), 3, 32, 32)
        assert side.labels.dtype == torch.int64
        np.testing.assert_array_equal(side.indices, rows)
        assert torch.equal(side.images, everything[torch.from_numpy(rows)])
        np.testing.assert_array_equal(side.labels.numpy(), dataset.labels[rows])
        assert set(side.labels.tolist()) == set(range(7))
    assert sum(len(side) for side in sides) == len(dataset)
    people = [set(dataset.identities[side.indices]) for side in sides]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])


def test_train_fraction_shrinks_only_the_training_side(synthetic_root, cache_dir):
    full = prepare_data(synthetic_cfg(synthetic_root, cache_dir))
    half = prepare_data(synthetic_cfg(synthetic_root, cache_dir, train_fraction=0.5))

    expected = training_subset(full.dataset, full.split.train, 0.5, seed=0)
    np.testing.assert_array_equal(half.train.indices, expected)
    assert set(half.train.indices) < set(full.train.indices)
    people = len(set(full.dataset.identities[full.split.train]))
    assert len(set(half.dataset.identities[half.train.indices])) == int(np.ceil(people / 2))
    np.testing.assert_array_equal(half.test.indices, full.test.indices)
    np.testing.assert_array_equal(half.val.indices, full.val.indices)


def test_image_level_split_is_labelled_subject_dependent(synthetic_root, cache_dir):
    prepared = prepare_data(synthetic_cfg(synthetic_root, cache_dir, split=SplitConfig(by="image", seed=2)))

    assert prepared.protocol == "subject-dependent (image-level split)"
    ids = prepared.dataset.identities
    assert set(ids[prepared.train.indices]) & set(ids[prepared.test.indices])


def test_an_unreadable_kdef_image_stops_preparation_and_is_named(tmp_path, cache_dir):
    root = tmp_path / "kdef"
    root.mkdir()
    codes = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
    for person in range(1, 5):
        for code in codes:
            Image.new("RGB", (20, 28), (person * 40, 90, 120)).save(root / f"AF{person:02d}{code}S.JPG")
    bad = root / "AF03HAS.JPG"
    bad.write_bytes(b"not a jpeg")

    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        prepare_data(DataConfig(dataset="kdef", root=root, image_size=16, cache_dir=cache_dir))
    assert not any(p.is_file() and p.suffix != ".lock" for p in cache_dir.rglob("*")), "nothing cached (a lock file may stay)"
