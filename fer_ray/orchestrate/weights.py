"""Pre-flight for ``model.weights: imagenet``: fetch torchvision's files once, where the sweep starts.

The driver calls prefetch_weights before Ray starts, so an offline machine or a corrupt file is one
clear line (exit 2), not a failure inside every trial. The files land in torch's hub cache
(<TORCH_HOME>/hub/checkpoints), which local trials share. On a multi-machine cluster each node reads
its own cache: point TORCH_HOME at storage every node mounts, or fetch on each node in the cluster
file's setup_commands (README: "ImageNet weights on a cluster").
"""

from __future__ import annotations

import os
from pathlib import Path

from fer_ray.orchestrate.spec import SpecError, SweepSpec

#: torchvision's DEFAULT ImageNet weights file of each architecture (tests/test_weights.py checks them
#: against torchvision), so --dry-run can look for them without importing torch
IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-11ad3fa6.pth",
    "resnet101": "resnet101-cd907fc2.pth",
    "resnet152": "resnet152-f82ba261.pth",
}


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, as torch.hub.get_dir() finds it without a set_dir():
    $TORCH_HOME/hub/checkpoints, else $XDG_CACHE_HOME/torch/..., else ~/.cache/torch/... ."""
    torch_home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def imagenet_archs(spec: SweepSpec) -> list[str]:
    """The architectures whose ImageNet weights the sweep's trials (or its training stage) build."""
    if spec.evaluates_model and spec.source.model != "train":
        return []  # it evaluates a trained model: no backbone is built from ImageNet weights

    def values(key: str, default: str) -> list[str]:  # what a grid or an Optuna choice can give ``key``
        space = spec.search.optuna.space if spec.search.optuna else {}
        choice = space[key].choice if key in space else None
        return list(spec.search.grid.get(key, choice or [default]))

    if "imagenet" not in values("model.weights", spec.model.weights):
        return []
    return sorted(set(values("model.arch", spec.model.arch)))


def prefetch_weights(spec: SweepSpec, progress: bool = True) -> list[Path]:
    """The cached ImageNet weight files of the sweep, fetched when missing; SpecError when that fails."""
    from fer_ray.core.models import WeightsError, ensure_imagenet_weights  # torch: only when a sweep runs

    try:
        return [ensure_imagenet_weights(arch, progress) for arch in imagenet_archs(spec)]
    except WeightsError as error:
        raise SpecError(f"model.weights: imagenet: {error}") from error
