"""The in-memory description of a face dataset: one record per image file.

Every reader (KDEF, RADIATE, image folder, synthetic) returns a :class:`FaceDataset`, so splits,
the tensor cache, evaluation and the bias experiment never need to know where images came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fer_ray.core.errors import InputError

if TYPE_CHECKING:  # only TensorSplit's annotations name torch: reading a dataset's records needs no torch
    import torch

#: The 7 KDEF expression classes, in label order (label i <-> EXPRESSIONS[i]).
EXPRESSIONS: tuple[str, ...] = (
    "afraid",
    "angry",
    "disgusted",
    "happy",
    "neutral",
    "sad",
    "surprised",
)


class DataError(InputError):
    """Bad dataset input: the message names the file, folder, key or value at fault."""


@dataclass(frozen=True)
class FaceImage:
    """One image file and what is known about the face in it.

    identity: the person (KDEF: gender+id, e.g. "F01"); None when the dataset does not say.
    gender / angle / session / race: group attributes used by filters and the bias experiment;
    None when unknown.
    """

    path: Path
    expression: str
    identity: str | None = None
    gender: str | None = None
    angle: str | None = None
    session: str | None = None
    race: str | None = None


@dataclass(frozen=True)
class FaceDataset:
    """An ordered collection of :class:`FaceImage` with a fixed class list.

    ``classes`` fixes label order; ``labels[i] == classes.index(images[i].expression)``.
    """

    name: str
    images: tuple[FaceImage, ...]
    classes: tuple[str, ...] = EXPRESSIONS
    #: free-form facts about how the dataset was read (e.g. counts of dropped labels)
    notes: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        """int64 array, shape (N,): class index of every image."""
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[im.expression] for im in self.images], dtype=np.int64)

    @property
    def identities(self) -> np.ndarray:
        """object array, shape (N,): identity per image; falls back to the file path when unknown
        (so a dataset without identities splits image by image)."""
        return np.array(
            [im.identity if im.identity is not None else str(im.path) for im in self.images],
            dtype=object,
        )

    def attribute(self, name: str) -> np.ndarray:
        """object array, shape (N,): one group attribute (gender, angle, session, race) per image."""
        return np.array([getattr(im, name) for im in self.images], dtype=object)

    def subset(self, indices) -> FaceDataset:
        """The images at ``indices`` (in that order), same classes and name."""
        return FaceDataset(
            name=self.name,
            images=tuple(self.images[int(i)] for i in indices),
            classes=self.classes,
            notes=dict(self.notes),
        )


@dataclass(frozen=True)
class TensorSplit:
    """One side of a split, decoded: what training and evaluation consume.

    images: uint8 tensor (N, 3, S, S), RGB, values 0..255 (divide by 255 for the [0,1] space)
    labels: int64 tensor (N,), class indices into FaceDataset.classes
    indices: int64 array (N,), rows of the FaceDataset these images came from
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])
