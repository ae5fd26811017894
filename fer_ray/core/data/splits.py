"""Train / val / test splits of a :class:`FaceDataset`, and nested training subsets.

by="identity" (default): subject-disjoint — every person's images sit on exactly one side, with
class proportions per side kept close to the global ones. by="image": the reference study's subject-dependent
protocol (a stratified split of images; the same person may appear in train and test).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from fer_ray.core.config import SplitConfig
from fer_ray.core.data.records import DataError, FaceDataset

#: Stream id (with the split seed) of the generator that picks which fold is carved.
_FOLD_CHOICE_STREAM = 1

#: What a subject-disjoint split promises over seeds, in one line for reports.
SPLIT_FAIRNESS = "every identity is in test with the same probability over split seeds, 1/round(1/test)"


@dataclass(frozen=True)
class Split:
    """Row indices (int64, sorted, disjoint, together covering the dataset) of each side."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    by: str

    @property
    def subject_dependent(self) -> bool:
        """True when the same person may appear on several sides (an image-level split)."""
        return self.by == "image"


def split_dataset(dataset: FaceDataset, cfg: SplitConfig) -> Split:
    """Divide ``dataset`` into train / val / test as ``cfg`` says (seeded by ``cfg.seed``).

    Fractions are of identities under by="identity" and of images under by="image".
    Raises DataError when there are too few identities (or images) to give every side one.
    """
    labels = dataset.labels
    rows = np.arange(len(dataset), dtype=np.int64)
    if cfg.by == "image":
        train, val, test = _split_images(rows, labels, cfg)
    else:
        train, val, test = _split_identities(rows, labels, dataset.identities, cfg)
    return Split(train=np.sort(train), val=np.sort(val), test=np.sort(test), by=cfg.by)


def training_subset(
    dataset: FaceDataset,
    train_indices: np.ndarray,
    fraction: float,
    seed: int,
    by: str = "identity",
) -> np.ndarray:
    """The rows of the first ``ceil(fraction * n)`` training identities in one seeded order.

    The order depends only on the training identities and ``seed``, never on ``fraction``, so the
    subsets are nested (10 % inside 20 % inside ... 100 %). The order interleaves identities by their
    most frequent class, so every prefix stays close to the class balance of the whole training side.
    by="image" treats every image as its own identity. Returns int64 row indices, sorted.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    train_indices = np.asarray(train_indices, dtype=np.int64)
    groups = train_indices.astype(str) if by == "image" else dataset.identities[train_indices]
    group_names, group_of_row = np.unique(groups, return_inverse=True)
    order = _class_interleaved_order(group_of_row, dataset.labels[train_indices], seed)
    keep = order[: math.ceil(fraction * len(group_names))]
    return np.sort(train_indices[np.isin(group_of_row, keep)])


def _split_identities(
    rows: np.ndarray, labels: np.ndarray, identities: np.ndarray, cfg: SplitConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_identities = len(np.unique(identities))
    _require_enough(n_identities, "identities", cfg)
    rest, test = _carve_groups(rows, labels, identities, cfg.test, cfg.seed)
    if cfg.val == 0.0:
        return rest, rows[:0], test
    train, val = _carve_groups(rest, labels[rest], identities[rest], cfg.val / (1.0 - cfg.test), cfg.seed)
    return train, val, test


def _carve_groups(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (kept, carved) with about ``fraction`` of the groups carved off.

    Chosen: sklearn StratifiedGroupKFold (shuffled, seeded) with k = n_splits = round(1/fraction) and
    one fold as the carved side — it keeps groups whole *and* balances classes across folds, which
    GroupShuffleSplit does not. Which fold is carved is drawn uniformly by the seed (from its own
    stream), never "fold 0" or "the fold of the best size": StratifiedGroupKFold files the people with
    the most irregular class counts first, into fold 0, so a rule that favours a fold favours those
    people (a person missing one expression was in test for 40 of 40 seeds). With a uniform fold,
    every group is carved with probability exactly 1/k over seeds, whatever its classes. A fraction
    above 1/2 takes the complement: one fold is kept (each group kept with probability 1/k).
    """
    carve_one_fold = fraction <= 0.5
    n_splits = max(2, round(1.0 / (fraction if carve_one_fold else 1.0 - fraction)))
    folder = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            # classes with fewer members than folds are fine: groups stay whole, balance is best-effort
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = [fold for _, fold in folder.split(rows, labels, groups)]
    except ValueError as error:  # sklearn: more folds than groups, or than members of every class
        raise DataError(
            f"cannot carve {fraction:.3f} of {len(np.unique(groups))} identities ({len(rows)} images) into a side of its own: {error}"
        ) from error
    folds = [fold for fold in folds if len(fold)]  # (a fold left empty by the greedy filing cannot be a side)
    # a second stream of the same seed, so the fold choice does not depend on sklearn's use of it
    chosen = folds[np.random.default_rng([seed, _FOLD_CHOICE_STREAM]).integers(len(folds))]
    in_fold = np.zeros(len(rows), dtype=bool)
    in_fold[chosen] = True
    if carve_one_fold:
        return rows[~in_fold], rows[in_fold]
    return rows[in_fold], rows[~in_fold]


def _split_images(rows: np.ndarray, labels: np.ndarray, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _require_enough(len(rows), "images", cfg)
    try:
        rest, test = train_test_split(rows, test_size=cfg.test, stratify=labels, random_state=cfg.seed)
        if cfg.val == 0.0:
            return rest, rows[:0], test
        train, val = train_test_split(rest, test_size=cfg.val / (1.0 - cfg.test), stratify=labels[rest], random_state=cfg.seed)
    except ValueError as error:  # sklearn: a class too small to stratify, or a side would be empty
        raise DataError(f"cannot split {len(rows)} images by image into val={cfg.val}, test={cfg.test}: {error}") from error
    return train, val, test


def _require_enough(count: int, unit: str, cfg: SplitConfig) -> None:
    """Every side needs at least one identity (image): 1/min(fraction) of them, and 2 at the least."""
    fractions = [cfg.test, 1.0 - cfg.test - cfg.val] + ([cfg.val] if cfg.val > 0 else [])
    needed = max(len(fractions), math.ceil(1.0 / min(fractions) - 1e-9))
    if count < needed:
        raise DataError(
            f"too few {unit} to split: {count} {unit} for val={cfg.val}, test={cfg.test} "
            f"(split.by={cfg.by!r}); these fractions need at least {needed} {unit}"
        )


def _class_interleaved_order(group_of_row: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of group ids 0..G-1 in which every prefix is close to class-balanced.

    Each group is filed under its most frequent class; groups of one class are shuffled and placed at
    evenly spaced positions (j + 0.5) / n_class, and the classes are merged by that position (a random
    tie-break). With KDEF every person has every class, so this reduces to a seeded permutation.
    """
    rng = np.random.default_rng(seed)
    n_groups = int(group_of_row.max()) + 1 if len(group_of_row) else 0
    counts = np.zeros((n_groups, int(labels.max()) + 1 if len(labels) else 1), dtype=np.int64)
    np.add.at(counts, (group_of_row, labels), 1)
    main_class = counts.argmax(axis=1)
    position = np.empty(n_groups, dtype=np.float64)
    for cls in np.unique(main_class):
        members = rng.permutation(np.flatnonzero(main_class == cls))
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((rng.random(n_groups), position))
