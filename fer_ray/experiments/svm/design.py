"""Which dataset rows the SVM sees: the training pool, its subject-disjoint folds and the test rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fer_ray.core.data.prepare import PreparedData
from fer_ray.core.svm import subject_folds
from fer_ray.experiments.svm.settings import Settings


@dataclass(frozen=True)
class CvDesign:
    """Which dataset rows the SVM sees: the training pool, its folds and the test rows.

    pool_rows / test_rows: int64 sorted rows of PreparedData.dataset. folds: (train, val) pairs of
    int64 positions into pool_rows (not dataset rows), one pair per fold.
    """

    pool_rows: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    test_rows: np.ndarray

    def rows_key(self) -> str:
        """A digest of the pool and test rows (for cache keys of results computed on them)."""
        return hashlib.sha256(self.pool_rows.tobytes() + b"|" + self.test_rows.tobytes()).hexdigest()[:16]

    def test_key(self) -> str:
        """A digest of the test rows."""
        return hashlib.sha256(self.test_rows.tobytes()).hexdigest()[:16]


def cv_design(data: PreparedData, cfg: Settings) -> CvDesign:
    """The training pool (train side, plus val when cfg.include_val), its subject-disjoint folds and
    the test rows. Folds group by identity even when the outer split is image-level, so no person is
    on both sides of a fold. Raises DataError when the pool holds fewer people than cfg.folds."""
    sides = [data.train.indices] + ([data.val.indices] if cfg.include_val else [])
    pool_rows = np.sort(np.concatenate(sides)).astype(np.int64)
    folds = subject_folds(data.dataset.labels[pool_rows], data.dataset.identities[pool_rows], cfg.folds, cfg.seed)
    return CvDesign(pool_rows=pool_rows, folds=folds, test_rows=np.sort(data.test.indices).astype(np.int64))
