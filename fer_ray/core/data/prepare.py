"""One call from a data config to decoded train / val / test tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fer_ray.core.config import PROTOCOL_LABELS, DataConfig
from fer_ray.core.data.cache import dataset_fingerprint, load_image_tensors
from fer_ray.core.data.datasets import read_dataset
from fer_ray.core.data.records import FaceDataset, TensorSplit
from fer_ray.core.data.splits import Split, split_dataset, training_subset


@dataclass
class PreparedData:
    """Everything a trial needs from the data: the records, the split and the decoded sides.

    ``split.train`` is the full training side; ``train`` holds only the cfg.train_fraction subset.
    ``fingerprint`` identifies the image files and resolution (see cache.dataset_fingerprint).
    """

    dataset: FaceDataset
    split: Split
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    fingerprint: str

    @property
    def protocol(self) -> str:
        """How people are divided between the sides, as every report labels it."""
        return PROTOCOL_LABELS[self.split.by]


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Read the dataset, decode it through the tensor cache, split it and take the training subset.

    Images in the TensorSplits are uint8 (N, 3, S, S) with S = cfg.image_size; labels int64 (N,).
    Raises DataError for bad data (missing folder, unreadable image, too few identities ...).
    """
    dataset = read_dataset(cfg)
    images = load_image_tensors(dataset, cfg.image_size, cfg.cache_dir)
    split = split_dataset(dataset, cfg.split)
    train_rows = training_subset(dataset, split.train, cfg.train_fraction, cfg.split.seed, by=cfg.split.by)
    labels = torch.from_numpy(dataset.labels)
    return PreparedData(
        dataset=dataset,
        split=split,
        train=_tensor_split(images, labels, train_rows),
        val=_tensor_split(images, labels, split.val),
        test=_tensor_split(images, labels, split.test),
        fingerprint=dataset_fingerprint(dataset, cfg.image_size),
    )


def _tensor_split(images: torch.Tensor, labels: torch.Tensor, rows: np.ndarray) -> TensorSplit:
    """The given rows of the cached tensor (copied out of the memory map) with their labels."""
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return TensorSplit(images=images[index], labels=labels[index], indices=np.asarray(rows, dtype=np.int64))
