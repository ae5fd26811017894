"""FerNet: every backbone builds, normalisation is inside, frozen blocks stay frozen, weights load
only from local files (never downloaded) and bad weights give one clear error."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fer_ray.core.config import ModelConfig
from fer_ray.core.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    WeightsNotFoundError,
    build_model,
    count_parameters,
)

ARCHS_AND_FEATURE_DIMS = [
    ("resnet18", 512),
    ("resnet34", 512),
    ("resnet50", 2048),
    ("resnet101", 2048),
    ("resnet152", 2048),
]


@pytest.mark.parametrize(("arch", "feature_dim"), ARCHS_AND_FEATURE_DIMS)
def test_every_arch_builds_and_gives_features_and_logits(arch, feature_dim):
    model = build_model(ModelConfig(arch=arch, weights="none", head=[16]), num_classes=7).eval()
    images = torch.rand(2, 3, 32, 32)

    with torch.no_grad():
        features, logits = model.features(images), model(images)

    assert model.feature_dim == feature_dim
    assert features.shape == (2, feature_dim)
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_count_is_torchvision_backbone_plus_head(arch):
    reference = torchvision.models.get_model(arch, weights=None)
    backbone_params = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith("fc."))
    dim = reference.fc.in_features
    head_params = (dim * 256 + 256) + (256 * 64 + 64) + (64 * 7 + 7)

    counts = count_parameters(build_model(ModelConfig(arch=arch, head=[256, 64], trainable="all")))

    assert counts == {"total": backbone_params + head_params, "trainable": backbone_params + head_params}


@pytest.mark.parametrize(("arch", "last_norm"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_zeroes_the_last_norm_of_every_block_only_when_asked(arch, last_norm):
    torch.manual_seed(0)
    default = build_model(ModelConfig(arch=arch, weights="none"))
    torch.manual_seed(0)
    zeroed = build_model(ModelConfig(arch=arch, weights="none", zero_init_residual=True))

    last = [name for name, _ in zeroed.named_parameters() if name.endswith(f"{last_norm}.weight")]
    assert len(last) == (8 if arch == "resnet18" else 16)  # one per residual block
    zero_state, default_state = zeroed.state_dict(), default.state_dict()
    assert all(torch.count_nonzero(zero_state[name]) == 0 for name in last)
    assert all(torch.equal(default_state[name], torch.ones_like(default_state[name])) for name in last)
    # everything else is drawn the same way from the same seed
    assert all(torch.equal(zero_state[name], value) for name, value in default_state.items() if name not in last)


def test_head_layers_follow_the_config():
    model = build_model(ModelConfig(head=[32, 16], dropout=0.25), num_classes=5)

    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [32, 16, 5]
    assert all(m.p == 0.25 for m in model.head if isinstance(m, nn.Dropout))
    assert isinstance(build_model(ModelConfig(head=[])).head[0], nn.Linear)


def test_imagenet_normalisation_is_inside_the_model():
    torch.manual_seed(0)
    model = build_model(ModelConfig(head=[8])).eval()
    images = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    with torch.no_grad():
        expected = model.head(model.backbone((images - mean) / std))
        unnormalised = model.head(model.backbone(images))
        logits = model(images)

    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, unnormalised)
    assert "mean" not in model.state_dict()  # a constant, not a weight


def _trainable_backbone_blocks(model) -> set[str]:
    """Top-level backbone modules (conv1, bn1, layer1..) holding a parameter that requires grad."""
    return {name.split(".")[1] for name, p in model.named_parameters() if name.startswith("backbone.") and p.requires_grad}


def test_only_layer4_and_head_train_and_frozen_batchnorm_stays_in_eval_mode():
    model = build_model(ModelConfig(trainable="layer4"))
    frozen_bn = model.backbone.layer3[0].bn1
    running_mean_before = frozen_bn.running_mean.clone()
    trained_bn = model.backbone.layer4[0].bn1
    trained_mean_before = trained_bn.running_mean.clone()

    model.train()
    model(torch.rand(4, 3, 32, 32))

    assert _trainable_backbone_blocks(model) == {"layer4"}
    assert any(name.startswith("head") for name, p in model.named_parameters() if p.requires_grad)
    assert not model.backbone.bn1.training and not frozen_bn.training
    assert trained_bn.training and model.head.training
    torch.testing.assert_close(frozen_bn.running_mean, running_mean_before)
    assert not torch.equal(trained_bn.running_mean, trained_mean_before)
    counts = count_parameters(model)
    layer4_and_head = sum(p.numel() for p in model.backbone.layer4.parameters()) + sum(p.numel() for p in model.head.parameters())
    assert counts["trainable"] == layer4_and_head < counts["total"]


@pytest.mark.parametrize(
    ("trainable", "expected_blocks"),
    [
        ("none", set()),
        ("stem+layer1", {"conv1", "bn1", "layer1"}),
        ("all", {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}),
    ],
)
def test_trainable_blocks(trainable, expected_blocks):
    model = build_model(ModelConfig(trainable=trainable))

    assert _trainable_backbone_blocks(model) == expected_blocks
    assert all(p.requires_grad for p in model.head.parameters())


def test_missing_imagenet_weights_name_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"

    with pytest.raises(WeightsNotFoundError) as error:
        build_model(ModelConfig(arch="resnet18", weights="imagenet"))

    message = str(error.value)
    assert str(expected) in message
    assert "TORCH_HOME" in message and "model.weights" in message
    assert not expected.exists()  # nothing was downloaded


def test_imagenet_weights_are_read_from_the_hub_cache_folder(tmp_path, monkeypatch):
    # TORCH_HOME, not torch.hub.set_dir: set_dir pins the folder for the rest of the process, and
    # later tests point TORCH_HOME elsewhere
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")

    model = build_model(ModelConfig(arch="resnet18", weights="imagenet"))

    torch.testing.assert_close(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)


def test_torchvision_state_dict_file_round_trip(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.*, which is ignored

    model = build_model(ModelConfig(arch="resnet18", weights=str(path)), num_classes=3)

    for name, tensor in reference.state_dict().items():
        if not name.startswith("fc."):
            torch.testing.assert_close(model.backbone.state_dict()[name], tensor)
    assert model.head[-1].out_features == 3


def test_fernet_state_dict_file_gives_the_backbone(tmp_path):
    source = build_model(ModelConfig(head=[8]))
    path = tmp_path / "fernet.pt"
    torch.save(source.state_dict(), path)

    model = build_model(ModelConfig(head=[4], weights=str(path)))

    torch.testing.assert_close(model.backbone.conv1.weight, source.backbone.conv1.weight)


def test_missing_weights_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(WeightsNotFoundError, match=r"weights\.pth.*does not exist"):
        build_model(ModelConfig(weights=str(missing)))


def test_unreadable_and_mismatched_weights_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*garbage\.pth"):
        build_model(ModelConfig(weights=str(garbage)))

    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.conv2.weight"]
    incomplete = tmp_path / "incomplete.pth"
    torch.save(state, incomplete)
    missing_key = r"does not fit a resnet18 backbone: missing keys \['layer4.1.conv2.weight'\]"
    with pytest.raises(WeightsError, match=missing_key):
        build_model(ModelConfig(weights=str(incomplete)))

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(WeightsError, match=r"wrong_shape\.pth does not fit a resnet18 backbone"):
        build_model(ModelConfig(weights=str(wrong_shape)))

    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match=r"neither a torchvision ResNet state dict"):
        build_model(ModelConfig(weights=str(other)))
