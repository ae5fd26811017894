"""Which device a trial computes on, and the precision / memory-layout choices that go with it.

On CUDA, training and inference run under bf16 autocast with channels_last tensors (tensor-core
friendly); on CPU both are off (bf16 autocast on CPU is slower than fp32 for convolutions).
Inside a Ray trial CUDA_VISIBLE_DEVICES already restricts which GPU "cuda" means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class DeviceError(ValueError):
    """A device was asked for that this machine does not have."""


def pick_device(preferred: str = "auto") -> torch.device:
    """The torch.device to use.

    preferred: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<index>".
    Raises DeviceError when CUDA is asked for but not available, or the name is not a device.
    """
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {preferred!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {preferred!r} was asked for but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {preferred!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a context that changes nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(device: torch.device) -> bool:
    """Whether to keep images and convolution weights in channels_last layout (CUDA only)."""
    return device.type == "cuda"


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """IEEE float32 (no TF32) for cuDNN convolutions and CUDA matmuls inside the block; the previous
    settings come back afterwards, also when the block raises.

    This torch build runs float32 cuDNN convolutions as TF32 by default (10 mantissa bits), which
    moves a 0.001 FGSM epsilon by ~7 %; attacks that promise float32 run under this. Uses torch's
    per-backend ``fp32_precision`` settings only: mixing them with the legacy ``allow_tf32`` flags
    makes torch raise. Process-wide, like the flags themselves; a no-op in effect on CPU.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters live on (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
