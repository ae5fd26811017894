"""What a trained FER network looks at: saliency maps, and where their mass lies.

Saliency (vanilla gradients, guided backpropagation, Grad-CAM) comes from captum and is taken with
respect to the [0,1] input images (B, 3, H, W): normalisation sits inside FerNet, so the maps live in
the same space as noise and attacks. Every map function puts the model in eval mode for the call,
restores its previous mode afterwards and returns float32 CPU tensors.

Guided backpropagation and torchvision ResNets: a BasicBlock calls its one in-place ``nn.ReLU``
twice (a Bottleneck three times), and captum's GuidedBackprop hooks modules. Captum registers its
tensor hooks afresh on every call of a hooked module (a forward pre-hook that clones the input), so
the guided rule does apply at every call, the reused in-place ones included; tests/test_saliency_maps.py
proves it against hand-written references, and ``CheckedGuidedBackprop`` re-checks it on every run
(ReLU calls seen in the forward == guided-rule applications in the backward), so a model whose
ReLUs escape the hooks (``F.relu`` in its forward, say) raises instead of giving a silently
half-guided map. One limit no count can see: captum applies the rule to the whole gradient of a
ReLU's input tensor, so a model that also uses that tensor elsewhere (not the case in torchvision
ResNets, where each ReLU input feeds only its ReLU) would get a wrong map.
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Saliency
from torch import nn
from torch.overrides import TorchFunctionMode

from fer_ray.core.device import model_device
from fer_ray.core.evaluate import as_float_images, eval_mode

#: Upper percentile of the grayscale guided map that becomes 1 (the reference study's convert_to_grayscale).
GRAYSCALE_CLIP_PERCENTILE = 99.0


class SaliencyError(ValueError):
    """Bad input to a saliency function; the message names the argument and its value."""


class GuidedBackpropError(RuntimeError):
    """The guided rule was not applied at every ReLU call of the model's forward pass."""


# ----------------------------------------------------------------------------------------------
# Saliency
# ----------------------------------------------------------------------------------------------


def vanilla_saliency(model: nn.Module, images: torch.Tensor, target) -> torch.Tensor:
    """Vanilla gradient saliency: float32 (B, H, W) in [0,1] on the CPU.

    images: (B, 3, H, W) float [0,1] or uint8 0..255. target: class index, int or (B,) ints.
    The map is max over channels of |d score_target / d input|, divided by its per-image maximum;
    an image whose gradient is all zero gets an all-zero map (never NaN).
    """
    inputs, targets = _prepare_inputs(model, images, target)
    with eval_mode(model):
        gradients = Saliency(model).attribute(inputs, target=targets, abs=True)
    return _normalise_by_max(gradients.detach().amax(dim=1)).cpu()


class CheckedGuidedBackprop(GuidedBackprop):
    """captum GuidedBackprop that counts, per ``attribute`` call, the ReLU calls of the forward
    pass (``relu_calls``, seen through a TorchFunctionMode, so ``F.relu`` / ``torch.relu`` count
    too) and the guided-rule applications of the backward pass (``rule_applications``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.forward_func = self._counted_forward
        self.relu_calls = 0
        self.rule_applications = 0

    def attribute(self, inputs, target=None, additional_forward_args=None):
        self.relu_calls = self.rule_applications = 0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
            return super().attribute(inputs, target=target, additional_forward_args=additional_forward_args)

    def _counted_forward(self, *args):
        with _ReluCallCounter() as counter:
            output = self.model(*args)
        self.relu_calls += counter.calls
        return output

    # Overrides captum's (private) per-ReLU-call backward hook only to count it.
    def _backward_hook(self, module, grad_input, grad_output):
        self.rule_applications += 1
        return super()._backward_hook(module, grad_input, grad_output)


def guided_backprop(model: nn.Module, images: torch.Tensor, target) -> torch.Tensor:
    """Raw guided-backpropagation gradients w.r.t. the [0,1] input: float32 (B, 3, H, W), CPU.

    At every ReLU call the gradient passed back is kept only where it is positive AND the ReLU's
    forward input was positive (Springenberg et al. 2015). images / target: as vanilla_saliency.
    Raises GuidedBackpropError when some ReLU call of the forward pass escaped the rule.
    """
    inputs, targets = _prepare_inputs(model, images, target)
    explainer = CheckedGuidedBackprop(model)
    with eval_mode(model):
        gradients = explainer.attribute(inputs, target=targets)
    if explainer.rule_applications != explainer.relu_calls:
        raise GuidedBackpropError(
            f"guided backprop applied its rule {explainer.rule_applications} times but the forward "
            f"pass of {type(model).__name__} called ReLU {explainer.relu_calls} times: every ReLU "
            "must be an nn.ReLU module call (not F.relu / torch.relu) for the map to be guided"
        )
    return gradients.detach().cpu()


def saliency_panels(guided: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference study's four guided-backprop panels per image, each float32 in [0,1], normalised per image.

    guided: raw guided gradients (B, 3, H, W). Returns
      "grayscale": (B, H, W) sum of |gradient| over channels, min -> 0 and 99th percentile -> 1
                   (clipped above), as the reference study's convert_to_grayscale;
      "colour":    (B, 3, H, W) the gradient min-max scaled to an RGB image;
      "positive":  (B, 3, H, W) max(gradient, 0) / its maximum;
      "negative":  (B, 3, H, W) max(-gradient, 0) / its maximum.
    A panel with nothing to show (e.g. no negative gradient) is all zeros, never NaN.
    """
    if guided.ndim != 4 or guided.shape[1] != 3:
        raise SaliencyError(f"guided gradients must be (B, 3, H, W), got shape {tuple(guided.shape)}")
    guided = guided.detach().float()
    return {
        "grayscale": _grayscale(guided.abs().sum(dim=1)),
        "colour": _normalise_min_max(guided),
        "positive": _normalise_by_max(guided.clamp(min=0)),
        "negative": _normalise_by_max((-guided).clamp(min=0)),
    }


def grad_cam(model: nn.Module, images: torch.Tensor, target, layer: str | nn.Module = "layer4") -> torch.Tensor:
    """Grad-CAM at ``layer``, bilinearly upsampled to the image: float32 (B, H, W) in [0,1], CPU.

    layer: a module, or its name in ``model`` or in ``model.backbone`` (so 'layer4' works for
    FerNet and plain torchvision ResNets). The ReLU'd class activation map is divided by its
    per-image maximum; an image with no positive evidence gets an all-zero map. The resolution the
    map was computed at (what limits what it can say): grad_cam_with_resolution.
    """
    return grad_cam_with_resolution(model, images, target, layer)[0]


def grad_cam_with_resolution(
    model: nn.Module, images: torch.Tensor, target, layer: str | nn.Module = "layer4"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """grad_cam's maps (B, H, W), and (h, w): the layer's own map size before upsampling (e.g. 2x2
    for layer4 of a ResNet at 33-64 px inputs)."""
    inputs, targets = _prepare_inputs(model, images, target)
    cam_layer = _resolve_layer(model, layer)
    with eval_mode(model):
        cam = LayerGradCam(model, cam_layer).attribute(inputs, target=targets, relu_attributions=True)
    upsampled = LayerAttribution.interpolate(cam.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    return _normalise_by_max(upsampled[:, 0].clamp(min=0)).cpu(), (int(cam.shape[-2]), int(cam.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Where a map's mass lies
# ----------------------------------------------------------------------------------------------

#: center_mass_summary reports a map kind's central mass only when upsampling from its resolution
#: lets the central share take values spread over at least this much of [0, 1].
MIN_INFORMATIVE_SPAN = 0.1


def center_mass_fraction(maps: torch.Tensor, center_fraction: float = 0.5) -> torch.Tensor:
    """Share of each non-negative map's mass inside the central box, float32 (B,).

    maps: (B, H, W). The box spans ``center_fraction`` of the height and of the width, centred
    (rounded to whole pixels). An all-zero map gives NaN (no mass to place).
    """
    if maps.ndim != 3:
        raise SaliencyError(f"maps must be (B, H, W), got shape {tuple(maps.shape)}")
    height, width = maps.shape[-2:]
    top, left = round(height * (1 - center_fraction) / 2), round(width * (1 - center_fraction) / 2)
    inner = maps[:, top : height - top, left : width - left].flatten(1).sum(dim=1)
    total = maps.flatten(1).sum(dim=1)
    return torch.where(total > 0, inner / total.clamp(min=torch.finfo(maps.dtype).tiny), torch.full_like(total, float("nan"))).float()


def center_mass_range(map_size: tuple[int, int], image_size: tuple[int, int], center_fraction: float = 0.5) -> tuple[float, float]:
    """The smallest and largest central share ANY non-negative map of ``map_size`` (h, w) can have
    once bilinearly upsampled (as grad_cam does) to ``image_size`` (H, W).

    Upsampling is linear, so a map's central mass and total mass are sums over its source cells of
    the cell's value times the central / total mass of that cell's upsampled footprint; the share is
    a weighted mean of the per-cell shares, and its range is [min, max] of those. At 2x2 every cell
    puts the same share in the box (its area, 0.25 for center_fraction 0.5), so the range collapses.
    """
    h, w = map_size
    basis = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
    footprints = LayerAttribution.interpolate(basis, tuple(image_size), interpolate_mode="bilinear")[:, 0]
    shares = center_mass_fraction(footprints.clamp(min=0), center_fraction)
    shares = shares[torch.isfinite(shares)]
    return float(shares.min()), float(shares.max())


def center_mass_summary(maps: torch.Tensor, center_fraction: float = 0.5, map_size: tuple[int, int] | None = None) -> dict:
    """Mean central share of a batch of maps of one kind, and whether it can mean anything.

    maps: (B, H, W) non-negative. map_size: the resolution the maps were computed at before
    upsampling (grad_cam_with_resolution); None for maps computed at the image's own resolution
    (vanilla, guided). All-zero maps have no mass to place: they are COUNTED (n_zero_maps), not
    averaged. Returns {"center_mass": mean share over the maps with mass, NaN when none has mass or
    the resolution makes it uninformative, "n_maps", "n_zero_maps", "informative": bool,
    "achievable_low", "achievable_high" (center_mass_range), "reason": why not informative, or ""}.
    Informative means the achievable range spans at least MIN_INFORMATIVE_SPAN.
    """
    shares = center_mass_fraction(maps, center_fraction)
    has_mass = torch.isfinite(shares)
    image_size = tuple(maps.shape[-2:])
    low, high = center_mass_range(map_size, image_size, center_fraction) if map_size else (0.0, 1.0)
    informative = high - low >= MIN_INFORMATIVE_SPAN
    reason = (
        ""
        if informative
        else (
            f"maps computed at {map_size[0]}x{map_size[1]} and upsampled to {image_size[0]}x{image_size[1]} can only put "
            f"{low:.3f}-{high:.3f} of their mass in the central box, whatever they show"
        )
    )
    if informative and not bool(has_mass.any()):
        reason = "every map is all zero (no positive evidence to place)"
    value = float(shares[has_mass].mean()) if informative and bool(has_mass.any()) else float("nan")
    return {
        "center_mass": value,
        "n_maps": int(len(shares)),
        "n_zero_maps": int((~has_mass).sum()),
        "informative": bool(informative),
        "achievable_low": low,
        "achievable_high": high,
        "reason": reason,
    }


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class _ReluCallCounter(TorchFunctionMode):
    """Counts relu calls (nn.ReLU, F.relu, torch.relu, Tensor.relu, in place or not) while active."""

    _RELU_NAMES = frozenset({"relu", "relu_"})

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self._RELU_NAMES:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _prepare_inputs(model: nn.Module, images: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """[0,1] float32 copy of ``images`` on the model's device, and targets as a (B,) long tensor."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise SaliencyError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    device = model_device(model)
    inputs = as_float_images(images.detach().to(device)).float().clone().requires_grad_(True)
    targets = torch.as_tensor(target, dtype=torch.long, device=device)
    if targets.ndim == 0:
        targets = targets.expand(inputs.shape[0])
    if targets.shape != (inputs.shape[0],):
        raise SaliencyError(f"target must be one class index or one per image ({inputs.shape[0]}), got shape {tuple(targets.shape)}")
    return inputs, targets


def _resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    for owner in (model, getattr(model, "backbone", None)):
        if isinstance(owner, nn.Module):
            try:
                return owner.get_submodule(layer)
            except AttributeError:
                continue
    names = [name for name, _ in model.named_modules() if name and name.count(".") <= 1]
    raise SaliencyError(f"layer {layer!r} is not a module of {type(model).__name__}; some of its modules: {names[:12]}")


def _normalise_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative maps (B, ...) divided by their per-image maximum; all-zero maps stay zero."""
    peak = maps.flatten(1).amax(dim=1).view(-1, *([1] * (maps.ndim - 1)))
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def _normalise_min_max(maps: torch.Tensor) -> torch.Tensor:
    """(maps - min) / (max - min) per image; a constant map becomes zeros."""
    low = maps.flatten(1).amin(dim=1).view(-1, *([1] * (maps.ndim - 1)))
    return _normalise_by_max(maps - low)


def _grayscale(magnitude: torch.Tensor) -> torch.Tensor:
    """(B, H, W) magnitudes: min -> 0, 99th percentile (or the max when that is the min) -> 1."""
    flat = magnitude.flatten(1)
    low = flat.amin(dim=1)
    high = torch.quantile(flat, GRAYSCALE_CLIP_PERCENTILE / 100, dim=1)
    high = torch.where(high > low, high, flat.amax(dim=1))  # a sparse map whose 99th percentile is its min
    span = (high - low).view(-1, 1, 1)
    scaled = (magnitude - low.view(-1, 1, 1)) / span.clamp(min=torch.finfo(magnitude.dtype).tiny)
    return torch.where(span > 0, scaled.clamp(0, 1), torch.zeros_like(magnitude))
