"""What only a CUDA machine can show: bf16 + channels_last training learns, FGSM at epsilon 0 equals
the float32 clean accuracy, a checkpoint written on CUDA loads on the CPU."""

from __future__ import annotations

import pytest
import torch

import test_train
from fer_ray.core.config import AugmentConfig, ModelConfig, TrainConfig
from fer_ray.core.device import strict_float32
from fer_ray.core.model_file import load_model, save_model
from fer_ray.core.models import build_model
from fer_ray.core.robustness import fgsm_accuracy
from fer_ray.core.train import StepOptions, fit, load_checkpoint
from test_train import LEARN_EPOCHS, LEARN_LR

CUDA = torch.device("cuda")
MODEL = ModelConfig(arch="resnet18", weights="none", head=[], dropout=0.0)
faces_to_learn = test_train.faces_to_learn  # the CPU tests' synthetic faces (a module fixture)


def _trained(faces, tmp_path):
    train, val = faces
    torch.manual_seed(0)
    model = build_model(MODEL, num_classes=7)
    cfg = TrainConfig(epochs=LEARN_EPOCHS, lr=LEARN_LR, batch_size=32, patience=None, seed=0, augment=AugmentConfig(enabled=True))
    result = fit(
        model, train, val, cfg, device=CUDA, checkpoint_path=tmp_path / "checkpoint.pt", model_config=MODEL.model_dump(mode="json")
    )
    return model, result


def test_bf16_channels_last_training_learns_and_its_checkpoint_loads_on_cpu(faces_to_learn, tmp_path):
    assert StepOptions.for_device(CUDA) == StepOptions(bf16=True, channels_last=True)
    model, result = _trained(faces_to_learn, tmp_path)
    assert next(model.parameters()).device.type == "cuda"
    assert result.best_val_acc > 0.4, [round(e.val_acc, 3) for e in result.history]  # chance 1/7
    assert result.history[-1].train_loss < result.history[0].train_loss

    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")  # written on CUDA
    assert all(t.device.type == "cpu" for t in checkpoint["model_state"].values())
    save_model(tmp_path / "model.pt", model, MODEL, [str(c) for c in range(7)])
    on_cpu, _ = load_model(tmp_path / "model.pt")
    _, val = faces_to_learn
    with strict_float32():
        cuda_logits = _fp32(model, val.images, CUDA)
        cpu_logits = _fp32(on_cpu, val.images, torch.device("cpu"))
    torch.testing.assert_close(cpu_logits, cuda_logits, atol=2e-3, rtol=2e-3)
    assert (cpu_logits.argmax(1) == cuda_logits.argmax(1)).float().mean() > 0.98


def test_fgsm_at_epsilon_zero_is_the_float32_clean_accuracy(faces_to_learn, tmp_path):
    model, _ = _trained(faces_to_learn, tmp_path)
    _, val = faces_to_learn
    saved = torch.backends.cudnn.conv.fp32_precision
    result = fgsm_accuracy(model, val.images, val.labels, [0.0, 0.001, 0.01], batch_size=64, device=CUDA)
    with strict_float32():
        clean = (_fp32(model, val.images, CUDA).argmax(1) == val.labels).numpy()
    assert result[0.0]["correct"].tolist() == clean.tolist()
    assert result[0.0]["accuracy"] == pytest.approx(clean.mean())
    assert result[0.01]["accuracy"] <= result[0.0]["accuracy"]
    assert torch.backends.cudnn.conv.fp32_precision == saved, "the attack restored the precision setting"


@torch.no_grad()
def _fp32(model, images, device) -> torch.Tensor:
    """Float32 logits (no autocast), CPU tensor (N, 7), of [0,1]-scaled uint8 images."""
    model.to(device).eval()
    return model(images.to(device).float() / 255).float().cpu()
