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


#: ``--set`` overrides that make any sweep file tiny: seconds per trial on 2 cores. The faces are the
#: embedded default's generator at 64x88 px, 6 people per gender, decoded at 32 px.
TINY = [
    "data.image_size=32", "data.synthetic.identities=6", "data.synthetic.width=64",
    "data.synthetic.height=88", "data.split.val=0.2", "data.split.test=0.2",
    "model.arch=resnet18", "model.weights=none", "model.head=[32]", "model.trainable=all",
    "train.epochs=2", "train.batch_size=32", "train.patience=null",
]


@pytest.fixture(scope="session")
def tiny_trained_model(tmp_path_factory) -> Path:
    """A fer_ray model file trained (2 epochs, no Ray/MLflow) on the TINY data; evaluation
    experiments' tests load it as ``source.model=<path>`` with the same TINY data overrides."""
    from fer_ray.experiments import finetune
    from fer_ray.experiments.base import LocalReporter, Trial
    from fer_ray.orchestrate.spec import resolve_spec

    spec = resolve_spec({"name": "tiny", "experiment": "finetune"}, TINY)
    folder = tmp_path_factory.mktemp("tiny_model")
    trial = Trial(sweep="tiny", data=spec.data, model=spec.model, train=spec.train, eval=spec.eval_config())
    finetune.run(trial, LocalReporter(folder))
    return folder / finetune.MODEL_FILE
