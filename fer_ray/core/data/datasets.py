"""One entry point from a DataConfig to a FaceDataset, whatever the dataset kind."""

from __future__ import annotations

from dataclasses import replace

from fer_ray.core.config import DataConfig
from fer_ray.core.data.folder import read_image_folder
from fer_ray.core.data.kdef import KDEF_PEOPLE_PER_GENDER, read_kdef
from fer_ray.core.data.radiate import read_radiate
from fer_ray.core.data.records import FaceDataset
from fer_ray.core.data.synthetic import synthetic_root
from fer_ray.core.files import default_cache_dir

__all__ = ["default_cache_dir", "read_dataset"]


def read_dataset(cfg: DataConfig) -> FaceDataset:
    """The images ``cfg`` describes (records only; nothing is decoded).

    synthetic: the generated KDEF-format folder (made on first use under the cache) or cfg.root;
    kdef: cfg.root filtered by cfg.angles / cfg.sessions; radiate: cfg.root + cfg.radiate;
    folder: cfg.root as root/<class>/<image>. Raises DataError for bad input.
    """
    if cfg.dataset == "synthetic":
        root = synthetic_root(cfg.synthetic, cfg.cache_dir) if cfg.root is None else cfg.root
        # Synthetic sets may hold more people than the 35 per gender of the real KDEF.
        max_person_id = max(KDEF_PEOPLE_PER_GENDER, cfg.synthetic.identities)
        dataset = read_kdef(root, cfg.angles, cfg.sessions, max_person_id=max_person_id)
        return replace(dataset, name="synthetic")
    if cfg.dataset == "kdef":
        return read_kdef(cfg.root, cfg.angles, cfg.sessions)
    if cfg.dataset == "radiate":
        return read_radiate(cfg.root, cfg.radiate)
    if cfg.dataset == "folder":
        return read_image_folder(cfg.root, cfg.identity_pattern)
    raise ValueError(f"unknown data.dataset {cfg.dataset!r}")  # unreachable: the config validates it
