"""Saliency (vanilla, guided backprop, Grad-CAM) and the maps' central mass on real torch nets.

Guided backprop is checked against references written by hand (manual backward passes with the
guided ReLU rule), on nets that reuse one in-place ReLU module, including torchvision's BasicBlock.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import LayerAttribution
from torch import nn
from torch.nn.grad import conv2d_input
from torchvision.models.resnet import BasicBlock

from fer_ray.core.config import ModelConfig
from fer_ray.core.models import build_model
from fer_ray.core.saliency_maps import (
    MIN_INFORMATIVE_SPAN,
    CheckedGuidedBackprop,
    GuidedBackpropError,
    SaliencyError,
    center_mass_fraction,
    center_mass_range,
    center_mass_summary,
    grad_cam,
    grad_cam_with_resolution,
    guided_backprop,
    saliency_panels,
    vanilla_saliency,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny tensors on the shared 2-core test machine."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)


def guided_rule(grad_output: torch.Tensor, relu_input: torch.Tensor) -> torch.Tensor:
    """Springenberg's rule: keep the gradient where it is positive and the forward input was positive."""
    return grad_output.clamp(min=0) * (relu_input > 0)


def plain_input_gradient(model: nn.Module, images: torch.Tensor, target: int) -> torch.Tensor:
    inputs = images.clone().requires_grad_(True)
    model(inputs)[:, target].sum().backward()
    return inputs.grad


# -- a Linear net that calls ONE in-place ReLU module twice -------------------------------------


class ReusedReluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 10), nn.Linear(10, 10), nn.Linear(10, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x.flatten(1))))))


def reused_relu_reference(net: ReusedReluNet, images: torch.Tensor, target: int) -> torch.Tensor:
    x = images.flatten(1)
    h1 = x @ net.fc1.weight.T + net.fc1.bias
    h2 = h1.clamp(min=0) @ net.fc2.weight.T + net.fc2.bias
    assert (h1 < 0).any() and (h2 < 0).any(), "the reference must exercise negative ReLU inputs"
    grad_r2 = net.fc3.weight[target].expand(len(x), -1)
    grad_r1 = guided_rule(grad_r2, h2) @ net.fc2.weight
    return (guided_rule(grad_r1, h1) @ net.fc1.weight).view_as(images)


def test_guided_backprop_matches_manual_reference_with_reused_inplace_relu():
    torch.manual_seed(0)
    net = ReusedReluNet().eval()
    images = torch.rand(5, 3, 2, 2)
    with torch.no_grad():
        expected = reused_relu_reference(net, images, target=1)
    guided = guided_backprop(net, images, target=1)
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-7)
    vanilla = plain_input_gradient(net, images, target=1)
    assert (guided - vanilla).abs().max() > 1e-3  # negative gradients were cut somewhere


# -- a conv stem + torchvision's own BasicBlock (its relu is called twice, in place) ------------


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.block = BasicBlock(4, 4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).flatten(1))


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)


def basic_block_reference(net: TinyResNet, images: torch.Tensor, target: int) -> torch.Tensor:
    block = net.block
    a = net.stem(images)
    h1 = block.bn1(block.conv1(a))
    r1 = h1.clamp(min=0)
    s = block.bn2(block.conv2(r1)) + a
    assert (h1 < 0).any() and (s < 0).any(), "the reference must exercise negative ReLU inputs"
    grad_r2 = net.fc.weight[target].view(1, *s.shape[1:]).expand_as(s)
    grad_s = guided_rule(grad_r2, s)  # second call of block.relu
    grad_r1 = conv2d_input(r1.shape, block.conv2.weight, grad_s * bn_scale(block.bn2), padding=1)
    grad_h1 = guided_rule(grad_r1, h1)  # first call of block.relu
    grad_a = conv2d_input(a.shape, block.conv1.weight, grad_h1 * bn_scale(block.bn1), padding=1) + grad_s
    return conv2d_input(images.shape, net.stem.weight, grad_a, padding=1)


def test_guided_backprop_matches_manual_reference_on_torchvision_basic_block():
    torch.manual_seed(1)
    net = TinyResNet()
    for bn in (net.block.bn1, net.block.bn2):  # non-trivial eval-mode BatchNorm
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    net.eval()
    images = torch.rand(3, 3, 4, 4)
    with torch.no_grad():
        expected = basic_block_reference(net, images, target=2)
    guided = guided_backprop(net, images, target=2)
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-7)
    assert (guided - plain_input_gradient(net, images, target=2)).abs().max() > 1e-3


# -- the real resnet18 ----------------------------------------------------------------------------


class GuidedReLUFunction(torch.autograd.Function):
    """Independent reference: a ReLU whose backward is the guided rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return guided_rule(grad_output, x)


class GuidedReLU(nn.Module):
    def forward(self, x):
        return GuidedReLUFunction.apply(x)


def test_guided_rule_fires_at_every_relu_call_of_resnet18_and_matches_reference():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    images = torch.rand(1, 3, 32, 32)
    module_calls = []
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [relu.register_forward_hook(lambda *_: module_calls.append(1)) for relu in relus]
    explainer = CheckedGuidedBackprop(model)
    guided = explainer.attribute(images.clone().requires_grad_(True), target=3).detach()
    for handle in handles:
        handle.remove()
    assert len(relus) == 9 and len(module_calls) == 17  # 9 modules: 1 stem + 2 calls per BasicBlock x 8
    assert explainer.relu_calls == 17 and explainer.rule_applications == 17

    # Same weights with every ReLU module swapped for the autograd-Function reference.
    reference_model = torchvision.models.resnet18(weights=None, num_classes=7)
    reference_model.load_state_dict(model.state_dict())
    reference_model.relu = GuidedReLU()
    for layer in (reference_model.layer1, reference_model.layer2, reference_model.layer3, reference_model.layer4):
        for block in layer:
            block.relu = GuidedReLU()
    assert not any(isinstance(m, nn.ReLU) for m in reference_model.modules())
    reference = plain_input_gradient(reference_model.eval(), images, target=3)
    torch.testing.assert_close(guided, reference, rtol=1e-5, atol=1e-8)
    assert (guided - plain_input_gradient(model, images, target=3)).abs().max() > 0


class FunctionalReluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.fc2(torch.nn.functional.relu(self.fc1(x.flatten(1))))  # escapes module hooks


def test_guided_backprop_refuses_a_model_whose_relu_escapes_the_hooks():
    with pytest.raises(GuidedBackpropError, match="applied its rule 0 times .* called ReLU 1 times"):
        guided_backprop(FunctionalReluNet(), torch.rand(2, 3, 2, 2), target=0)


# -- maps on a FerNet -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fernet():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet18", weights="none", head=[16], dropout=0.3), num_classes=7)


def assert_unit_maps(maps: torch.Tensor, shape: tuple[int, ...]):
    assert maps.shape == shape and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps.flatten(1).amax(dim=1), torch.ones(shape[0]))


def test_saliency_maps_have_image_shape_and_unit_range(fernet):
    torch.manual_seed(2)
    images = (torch.rand(2, 3, 48, 40) * 255).to(torch.uint8)
    fernet.train()
    targets = [1, 4]
    assert_unit_maps(vanilla_saliency(fernet, images, targets), (2, 48, 40))
    guided = guided_backprop(fernet, images, targets)
    assert guided.shape == (2, 3, 48, 40)
    panels = saliency_panels(guided)
    assert set(panels) == {"grayscale", "colour", "positive", "negative"}
    assert_unit_maps(panels["grayscale"], (2, 48, 40))
    for name in ("colour", "positive", "negative"):
        assert_unit_maps(panels[name], (2, 3, 48, 40))
    torch.testing.assert_close(panels["positive"] > 0, guided > 0)
    torch.testing.assert_close(panels["negative"] > 0, guided < 0)
    assert_unit_maps(grad_cam(fernet, images, targets, layer="layer4"), (2, 48, 40))
    assert fernet.training  # the caller's mode is restored


def test_degenerate_gradients_give_zero_maps_not_nan():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    nn.init.zeros_(net[1].weight)
    maps = vanilla_saliency(net, torch.rand(2, 3, 4, 4), target=0)
    assert maps.shape == (2, 4, 4) and torch.equal(maps, torch.zeros(2, 4, 4))
    for panel in saliency_panels(torch.zeros(1, 3, 4, 4)).values():
        assert torch.equal(panel, torch.zeros_like(panel))


def test_bad_layer_and_target_are_named(fernet):
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(SaliencyError, match="'layer9'"):
        grad_cam(fernet, images, 0, layer="layer9")
    with pytest.raises(SaliencyError, match=r"one per image \(2\), got shape \(3,\)"):
        vanilla_saliency(fernet, images, [0, 1, 2])


def test_center_mass_at_2x2_is_the_box_area_whatever_the_map_and_is_withheld():
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.random((6, 1, 2, 2)))
    maps = LayerAttribution.interpolate(coarse, (40, 40), interpolate_mode="bilinear")[:, 0]
    torch.testing.assert_close(center_mass_fraction(maps), torch.full((6,), 0.25, dtype=torch.float32))
    assert center_mass_range((2, 2), (40, 40)) == pytest.approx((0.25, 0.25))
    summary = center_mass_summary(torch.cat([maps, torch.zeros(2, 40, 40, dtype=maps.dtype)]), map_size=(2, 2))
    assert summary["informative"] is False and np.isnan(summary["center_mass"])
    assert "2x2" in summary["reason"] and "0.250-0.250" in summary["reason"]
    assert summary["n_maps"] == 8 and summary["n_zero_maps"] == 2


def test_center_mass_is_reported_where_the_resolution_allows_and_zero_maps_are_counted():
    low, high = center_mass_range((4, 4), (64, 64))
    assert high - low >= MIN_INFORMATIVE_SPAN and 0 <= low < 0.25 < high <= 1
    maps = torch.zeros(3, 8, 8)
    maps[0, 3:5, 3:5] = 1.0  # all mass in the central box
    maps[1, 0, 0] = 1.0  # all mass in a corner
    summary = center_mass_summary(maps)  # full-resolution maps (vanilla, guided)
    assert summary["informative"] and summary["reason"] == ""
    assert summary["center_mass"] == pytest.approx(0.5)  # mean of 1 and 0; the zero map is counted, not averaged
    assert summary["n_zero_maps"] == 1
    empty = center_mass_summary(torch.zeros(2, 8, 8))
    assert np.isnan(empty["center_mass"]) and empty["n_zero_maps"] == 2 and "all zero" in empty["reason"]


def test_grad_cam_reports_its_layer_resolution(fernet):
    images = torch.rand(2, 3, 40, 40)
    maps, size = grad_cam_with_resolution(fernet, images, 0)
    assert maps.shape == (2, 40, 40) and size == (2, 2)
