"""The FER network: an ImageNet ResNet backbone (torchvision) with a new dense head.

Inputs are [0,1] float images (B, 3, H, W); ImageNet normalisation happens inside the model, so
noise, attacks and saliency all work in image space. build_model never downloads: 'imagenet' reads
torchvision's file from the local torch hub cache, or the caller names a file. ensure_imagenet_weights
fetches that file into the cache (hash-checked), once, where a sweep starts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet

from fer_ray.core.config import BACKBONE_BLOCKS, ModelConfig
from fer_ray.core.errors import InputError

#: torchvision's ImageNet channel statistics, in the [0,1] RGB space.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class WeightsError(InputError):
    """A weights file that cannot be used: unreadable, or not a ResNet of the configured arch."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file that is not there; the message says which file to place where."""


class FerNet(nn.Module):
    """ResNet backbone (fc removed) + dense head, with ImageNet normalisation inside.

    forward(x): x float (B, 3, H, W) in [0,1] -> logits float (B, num_classes).
    features(x): the backbone's pooled output, float (B, D) with D = ``feature_dim``
    (512 for resnet18/34, 2048 for resnet50/101/152).
    Blocks of the backbone not in ``trainable_blocks`` are frozen: their parameters do not require
    grad and their BatchNorm layers stay in eval mode (running statistics fixed) even under train().
    """

    def __init__(self, backbone: ResNet, head: nn.Sequential, trainable_blocks: frozenset[str]):
        super().__init__()
        self.feature_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = head
        self.trainable_blocks = frozenset(trainable_blocks)
        # Constants of the architecture, not learned: kept out of the state dict.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze_blocks()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: float (B, D) from [0,1] images (B, 3, H, W)."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: float (B, num_classes) from [0,1] images (B, 3, H, W)."""
        return self.head(self.features(x))

    def train(self, mode: bool = True) -> FerNet:
        """As nn.Module.train, but BatchNorm in frozen backbone blocks always stays in eval mode."""
        super().train(mode)
        if mode:
            for block in self.frozen_block_modules():
                for module in block.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def block_modules(self) -> dict[str, list[nn.Module]]:
        """The backbone's blocks by name ("stem" = conv1 + bn1, "layer1".."layer4")."""
        blocks: dict[str, list[nn.Module]] = {"stem": [self.backbone.conv1, self.backbone.bn1]}
        for name in BACKBONE_BLOCKS[1:]:
            blocks[name] = [getattr(self.backbone, name)]
        return blocks

    def frozen_block_modules(self) -> list[nn.Module]:
        """Modules of the backbone blocks that do not train."""
        return [module for name, modules in self.block_modules().items() if name not in self.trainable_blocks for module in modules]

    def _freeze_blocks(self) -> None:
        for module in self.frozen_block_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)


def trainable_blocks(trainable: str) -> frozenset[str]:
    """'none' | 'all' | '+'-joined block names (validated by ModelConfig) -> set of block names."""
    if trainable == "all":
        return frozenset(BACKBONE_BLOCKS)
    if trainable == "none":
        return frozenset()
    return frozenset(trainable.split("+"))


def build_head(in_features: int, widths: list[int], dropout: float, num_classes: int) -> nn.Sequential:
    """Linear -> ReLU -> Dropout for each hidden width, then Linear -> num_classes."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def build_model(cfg: ModelConfig, num_classes: int = 7) -> FerNet:
    """A FerNet for ``cfg`` (arch, weights, head, dropout, trainable blocks).

    cfg.weights: 'none' -> random init (seed torch before calling for reproducible weights);
    'imagenet' -> torchvision's DEFAULT ImageNet weights (IMAGENET1K_V1 for resnet18/34,
    IMAGENET1K_V2 for resnet50/101/152), read only from the local torch hub cache;
    a path -> a torchvision ResNet state dict or a fer_ray model/checkpoint file (backbone taken).
    cfg.zero_init_residual: the random backbone's residual blocks start at zero (torchvision's option).
    The head is always freshly initialised. Raises WeightsNotFoundError / WeightsError.
    """
    backbone = torchvision.models.get_model(cfg.arch, weights=None, zero_init_residual=cfg.zero_init_residual)
    if cfg.weights == "imagenet":
        _load_backbone(backbone, imagenet_weights_file(cfg.arch), cfg.arch)
    elif cfg.weights != "none":
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"model.weights file {str(path)!r} does not exist; model.weights must be 'imagenet', "
                "'none', or the path of a state-dict file"
            )
        _load_backbone(backbone, path, cfg.arch)
    head = build_head(backbone.fc.in_features, cfg.head, cfg.dropout, num_classes)
    return FerNet(backbone, head, trainable_blocks(cfg.trainable))


def imagenet_weights_file(arch: str) -> Path:
    """The local file of torchvision's DEFAULT ImageNet weights for ``arch``; never downloads.

    Raises WeightsNotFoundError naming the file torchvision would have downloaded and where to put it.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    file_name = os.path.basename(urlparse(weights.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights for {arch} ({weights}) are not in the local torch hub cache: expected "
            f"the file {path} (downloadable from {weights.url}). Place it there (the folder follows "
            "$TORCH_HOME: <TORCH_HOME>/hub/checkpoints), or set model.weights to the path of the file "
            "instead. Nothing is downloaded at run time."
        )
    return path


def verify_weights_hash(path: Path) -> Path:
    """``path`` when its SHA-256 starts with the prefix in its torchvision file name
    (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``, torch.hub.HASH_REGEX); a name without one passes.

    Raises WeightsError naming the file, both hashes and what to do (a truncated or foreign file).
    """
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None or not match.group(1):
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise WeightsError(
            f"weights file {path} has SHA-256 {digest.hexdigest()[:16]}..., but torchvision publishes "
            f"{match.group(1)}... for it: the file is incomplete or not the published one; delete it "
            "and fetch it again"
        )
    return path


def fetch_weights_file(url: str, progress: bool = False) -> Path:
    """The torch hub cache file of ``url`` (<TORCH_HOME>/hub/checkpoints/<file name>), downloaded
    when missing and hash-checked either way (verify_weights_hash).

    torch.hub.download_url_to_file writes a .partial file and renames it only once the SHA-256 matches,
    so concurrent or interrupted fetches never leave a broken file under the final name.
    Raises WeightsNotFoundError (the file to place where, and why the download failed) or WeightsError.
    """
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None, progress=progress)
        except RuntimeError as error:  # torch's hash mismatch
            raise WeightsError(f"the download of {url} was refused: {error}") from error
        except OSError as error:  # offline, DNS, HTTP errors (URLError is an OSError)
            raise WeightsNotFoundError(
                f"cannot download {url} ({getattr(error, 'reason', error)}): place the file at {path} "
                "(the folder follows $TORCH_HOME: <TORCH_HOME>/hub/checkpoints), or set model.weights "
                "to the path of the file instead"
            ) from error
    return verify_weights_hash(path)


def ensure_imagenet_weights(arch: str, progress: bool = False) -> Path:
    """torchvision's DEFAULT ImageNet weights file for ``arch`` in the local torch hub cache, fetched
    when missing (online) and hash-checked; see fetch_weights_file for the errors."""
    return fetch_weights_file(torchvision.models.get_model_weights(arch).DEFAULT.url, progress)


def _load_backbone(backbone: ResNet, path: Path, arch: str) -> None:
    state = backbone_state_from_file(path)
    expected = {k for k in backbone.state_dict() if not k.startswith("fc.")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not fit a {arch} backbone: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    try:
        backbone.load_state_dict(state, strict=False)  # fc is not in the file: it is replaced
    except RuntimeError as error:  # shape mismatches
        raise WeightsError(f"weights file {path} does not fit a {arch} backbone: {error}") from error


def backbone_state_from_file(path: Path) -> dict[str, torch.Tensor]:
    """Backbone tensors (torchvision ResNet key names, fc.* dropped) read from ``path``.

    Accepts a plain torchvision ResNet state dict, a FerNet state dict ('backbone.*' keys), a
    save_model file ('model_state') or a fit checkpoint ('best_model_state' preferred over
    'model_state'). Loaded with weights_only=True.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for unreadable files
        raise WeightsError(f"cannot read weights file {path}: {error}") from error
    if not isinstance(content, dict):
        raise WeightsError(f"weights file {path} holds a {type(content).__name__}, not a state dict")
    for key in ("best_model_state", "model_state"):
        if isinstance(content.get(key), dict):
            content = content[key]
            break
    if any(str(k).startswith("backbone.") for k in content):
        return {k[len("backbone.") :]: v for k, v in content.items() if k.startswith("backbone.")}
    if "conv1.weight" in content:
        return {k: v for k, v in content.items() if not k.startswith("fc.")}
    raise WeightsError(
        f"weights file {path} is neither a torchvision ResNet state dict (keys like 'conv1.weight') "
        f"nor a fer_ray model or checkpoint; its first keys are {list(content)[:5]}"
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameter elements: {"total": all, "trainable": those that require grad}."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
