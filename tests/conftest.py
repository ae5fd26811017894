"""Shared fixtures: tiny synthetic KDEF-format faces, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep the suite's caches out of the user's home and single-threaded torch fast on 2 cores.
os.environ.setdefault("FER_RAY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic KDEF folder: 12 people per gender, sessions A+B, straight-on, 64x88 px."""
    from fer_ray.core.config import SyntheticConfig
    from fer_ray.core.data.synthetic import generate_synthetic_kdef

    root = tmp_path_factory.mktemp("synthetic_kdef")
    generate_synthetic_kdef(root, SyntheticConfig(identities=12, width=64, height=88, seed=0))
    return root


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    """An empty tensor-cache folder for one test."""
    path = tmp_path / "cache"
    path.mkdir()
    return path
