"""Splits: subject-disjoint, stratified, seeded; nested training subsets; the image-level protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fer_ray.core.config import SplitConfig
from fer_ray.core.data.records import EXPRESSIONS, DataError, FaceDataset, FaceImage
from fer_ray.core.data.splits import Split, split_dataset, training_subset

FRACTIONS = (0.1, 0.2, 0.5, 0.7, 0.8, 1.0)


def kdef_like(people: int = 24) -> FaceDataset:
    """KDEF's shape (no files needed): every person, both sessions, all 7 expressions."""
    images = [
        FaceImage(path=Path(f"/kdef/{s}{g}{i:02d}{e}.jpg"), expression=e, identity=f"{g}{i:02d}", session=s)
        for g in "FM"
        for i in range(1, people // 2 + 1)
        for s in "AB"
        for e in EXPRESSIONS
    ]
    return FaceDataset(name="kdef-like", images=tuple(images))


def one_class_people(seed: int = 0) -> FaceDataset:
    """80 people with 1-5 images each, all of one expression; classes unequally common (6-20 people)."""
    rng = np.random.default_rng(seed)
    people_per_class = [16, 6, 6, 12, 20, 12, 8]
    expressions = rng.permutation(np.repeat(np.arange(7), people_per_class))
    images = []
    for person, label in enumerate(expressions):
        expression = EXPRESSIONS[label]
        for shot in range(rng.integers(1, 6)):
            path = Path(f"/p{person}_{shot}.png")
            images.append(FaceImage(path=path, expression=expression, identity=f"P{person}"))
    return FaceDataset(name="one-class-people", images=tuple(images))


def class_shares(dataset: FaceDataset, rows: np.ndarray) -> np.ndarray:
    return np.bincount(dataset.labels[rows], minlength=len(dataset.classes)) / len(rows)


def sides(split: Split) -> list[np.ndarray]:
    return [split.train, split.val, split.test]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_identity_split_is_subject_disjoint_and_covers_every_image_once(seed):
    dataset = kdef_like()
    split = split_dataset(dataset, SplitConfig(seed=seed))

    assert split.by == "identity" and not split.subject_dependent
    assert all(side.dtype == np.int64 for side in sides(split))
    np.testing.assert_array_equal(np.sort(np.concatenate(sides(split))), np.arange(len(dataset)))
    people = [set(dataset.identities[side]) for side in sides(split)]
    assert not (people[0] & people[1]) and not (people[0] & people[2]) and not (people[1] & people[2])
    # 24 people at val=test=0.15: 1/7 of them ~ 3-4 people each on val and test
    assert [len(p) for p in people[1:]] in ([3, 4], [4, 3], [3, 3], [4, 4])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_split_keeps_class_proportions_when_people_differ(seed):
    dataset = one_class_people(seed)
    split = split_dataset(dataset, SplitConfig(val=0.2, test=0.2, seed=seed))

    people = [set(dataset.identities[side]) for side in sides(split)]
    assert not (people[0] & people[1] | people[0] & people[2] | people[1] & people[2])
    overall = class_shares(dataset, np.arange(len(dataset)))
    for side in sides(split):
        shares = class_shares(dataset, side)
        assert (shares > 0).all(), f"a class is missing from a side: {shares}"
        assert np.abs(shares - overall).max() < 0.06, (shares, overall)


def test_identity_split_is_seeded():
    dataset = kdef_like()
    first, again = split_dataset(dataset, SplitConfig(seed=5)), split_dataset(dataset, SplitConfig(seed=5))
    other = split_dataset(dataset, SplitConfig(seed=6))
    for a, b in zip(sides(first), sides(again)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.test, other.test)


def test_zero_validation_fraction_leaves_val_empty():
    split = split_dataset(kdef_like(), SplitConfig(val=0.0, test=0.25))
    assert len(split.val) == 0 and len(split.train) + len(split.test) == 24 * 14


def test_image_split_is_flagged_subject_dependent_and_stratified():
    dataset = kdef_like()
    split = split_dataset(dataset, SplitConfig(by="image", val=0.15, test=0.15, seed=3))

    assert split.by == "image" and split.subject_dependent
    np.testing.assert_array_equal(np.sort(np.concatenate(sides(split))), np.arange(len(dataset)))
    total = len(dataset)
    assert abs(len(split.test) - 0.15 * total) <= 1
    assert abs(len(split.val) - 0.15 * total) <= 2
    # image-level: the same people appear in train and test (that is the point of the label)
    assert set(dataset.identities[split.train]) & set(dataset.identities[split.test])
    overall = class_shares(dataset, np.arange(total))
    for side in sides(split):
        assert np.abs(class_shares(dataset, side) - overall).max() < 0.03


def test_too_few_identities_is_a_data_error_naming_count_and_fractions():
    with pytest.raises(DataError, match=r"4 identities for val=0\.15, test=0\.15.*at least 7 identities"):
        split_dataset(kdef_like(people=4), SplitConfig())


def test_too_few_images_for_an_image_split_names_them():
    dataset = kdef_like(people=2).subset(range(5))
    with pytest.raises(DataError, match=r"5 images for val=0\.15, test=0\.15"):
        split_dataset(dataset, SplitConfig(by="image"))


@pytest.mark.parametrize("seed", [0, 4])
def test_training_subsets_are_nested_whole_people_of_the_right_size(seed):
    dataset = kdef_like(people=40)
    split = split_dataset(dataset, SplitConfig(seed=seed))
    people_in_train = set(dataset.identities[split.train])

    subsets = [training_subset(dataset, split.train, f, seed) for f in FRACTIONS]
    for fraction, rows in zip(FRACTIONS, subsets):
        people = set(dataset.identities[rows])
        assert len(people) == math.ceil(fraction * len(people_in_train))
        assert set(rows) <= set(split.train)
        # whole people: every training image of a chosen person is in
        assert len(rows) == sum(1 for p in dataset.identities[split.train] if p in people)
    for smaller, larger in zip(subsets, subsets[1:]):
        assert set(smaller) < set(larger)
    np.testing.assert_array_equal(subsets[-1], split.train)
    np.testing.assert_array_equal(subsets[0], training_subset(dataset, split.train, 0.1, seed))


def test_training_subset_prefixes_stay_class_balanced():
    # 70 one-expression people, 10 per class: the 10 % subset (7 people) must hold one of each
    images = tuple(FaceImage(path=Path(f"/p{i}.png"), expression=EXPRESSIONS[i % 7], identity=f"P{i}") for i in range(70))
    dataset = FaceDataset(name="balanced", images=images)
    rows = training_subset(dataset, np.arange(70), 0.1, seed=11)
    assert sorted(dataset.labels[rows]) == list(range(7))


def test_training_subset_by_image_takes_images():
    dataset = kdef_like()
    split = split_dataset(dataset, SplitConfig(by="image", seed=1))
    half = training_subset(dataset, split.train, 0.5, seed=1, by="image")
    quarter = training_subset(dataset, split.train, 0.25, seed=1, by="image")
    assert len(half) == math.ceil(0.5 * len(split.train))
    assert len(quarter) == math.ceil(0.25 * len(split.train))
    assert set(quarter) < set(half) <= set(split.train)
    # images of one person are now spread over subsets rather than taken whole
    assert len(set(dataset.identities[quarter])) > math.ceil(0.25 * 24)


def irregular_people(people: int = 30, seed: int = 0) -> FaceDataset:
    """``people`` persons with 0-3 images of each expression at random (at least one image each)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, size=(people, len(EXPRESSIONS)))
    counts[counts.sum(axis=1) == 0, 0] = 1
    images = [
        FaceImage(path=Path(f"/p{person}_{label}_{shot}.png"), expression=EXPRESSIONS[label], identity=f"P{person:02d}")
        for person in range(people)
        for label in range(len(EXPRESSIONS))
        for shot in range(counts[person, label])
    ]
    return FaceDataset(name="irregular", images=tuple(images))


#: split seeds of the fairness simulation, and the tolerance on each person's frequency: 4 binomial
#: standard deviations at p = 1/7 over 200 seeds (sqrt(p (1 - p) / 200) = 0.025)
FAIRNESS_SEEDS = 200
FAIRNESS_TOLERANCE = 0.10


def test_every_person_is_equally_likely_to_be_in_test_and_val_over_seeds():
    dataset = irregular_people()
    people = np.unique(dataset.identities)
    in_test = np.zeros(len(people))
    in_val = np.zeros(len(people))
    overall = class_shares(dataset, np.arange(len(dataset)))
    mean_test_shares = np.zeros(len(dataset.classes))
    for seed in range(FAIRNESS_SEEDS):
        split = split_dataset(dataset, SplitConfig(val=0.15, test=0.15, seed=seed))
        in_test += np.isin(people, dataset.identities[split.test])
        in_val += np.isin(people, dataset.identities[split.val])
        mean_test_shares += class_shares(dataset, split.test) / FAIRNESS_SEEDS
    # test: one fold of round(1 / 0.15) = 7; val: one fold of round(0.85 / 0.15) = 6 of the rest
    expected_test, expected_val = 1 / 7, (6 / 7) * (1 / 6)
    test_frequency, val_frequency = in_test / FAIRNESS_SEEDS, in_val / FAIRNESS_SEEDS
    worst = people[np.argmax(np.abs(test_frequency - expected_test))]
    assert np.abs(test_frequency - expected_test).max() <= FAIRNESS_TOLERANCE, (worst, test_frequency.round(3))
    assert np.abs(val_frequency - expected_val).max() <= FAIRNESS_TOLERANCE, val_frequency.round(3)
    # still stratified: on average over seeds the test side has every class in its overall share
    assert np.abs(mean_test_shares - overall).max() < 0.02, (mean_test_shares, overall)
