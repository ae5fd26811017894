"""strict_float32: TF32 off inside attacks, the previous settings restored after (also on errors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_ray.core.device import strict_float32
from fer_ray.core.robustness import fgsm_accuracy, pgd_accuracy

CONV, MATMUL = torch.backends.cudnn.conv, torch.backends.cuda.matmul


@pytest.fixture()
def tf32_on():
    """This torch's defaults (cuDNN conv TF32), put back whatever a test does."""
    saved = (CONV.fp32_precision, MATMUL.fp32_precision)
    CONV.fp32_precision, MATMUL.fp32_precision = "tf32", "tf32"
    yield
    CONV.fp32_precision, MATMUL.fp32_precision = saved


def test_strict_float32_scopes_and_restores(tf32_on):
    with strict_float32():
        assert (CONV.fp32_precision, MATMUL.fp32_precision) == ("ieee", "ieee")
        assert torch.get_float32_matmul_precision() == "highest"
    assert (CONV.fp32_precision, MATMUL.fp32_precision) == ("tf32", "tf32")
    with pytest.raises(KeyError), strict_float32():
        raise KeyError("inside")
    assert (CONV.fp32_precision, MATMUL.fp32_precision) == ("tf32", "tf32")
    assert torch.backends.cudnn.allow_tf32, "the legacy flag still reads consistently afterwards"


class PrecisionSpy(nn.Module):
    """A 7-class linear model that records the conv/matmul precision each forward pass ran under."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 7)
        self.seen: set[tuple[str, str]] = set()

    def forward(self, x):
        self.seen.add((CONV.fp32_precision, MATMUL.fp32_precision))
        return self.linear(x.flatten(1))


def test_attacks_run_in_ieee_float32_and_restore(tf32_on):
    model = PrecisionSpy()
    images, labels = torch.rand(6, 3, 8, 8), torch.arange(6) % 7
    fgsm = fgsm_accuracy(model, images, labels, [0.0, 0.01], batch_size=4)
    pgd_accuracy(model, images, labels, [0.01], steps=2, batch_size=4)
    assert model.seen == {("ieee", "ieee")}
    assert (CONV.fp32_precision, MATMUL.fp32_precision) == ("tf32", "tf32")
    clean = (model(images).argmax(1) == labels).float().mean().item()
    assert fgsm[0.0]["accuracy"] == pytest.approx(clean)
