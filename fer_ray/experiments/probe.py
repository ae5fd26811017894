"""A trial that trains nothing: it reports a few instant "epochs" and where it ran.

Two uses: smoke-testing a cluster's wiring (Ray scheduling, GPUs seen, MLflow logging from workers,
checkpoints) in seconds with ``python -m fer_ray.sweep sweeps/probe.yaml --address auto``, and the
overhead benchmark (benchmarks/overhead.py), where it is the "trivial trial".
"""

from __future__ import annotations

import platform

from pydantic import Field

from fer_ray.core.config import Strict
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial
from fer_ray.experiments.contract import Experiment

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
torch = lazy_module("torch")
core_device = lazy_module("fer_ray.core.device")


class Settings(Strict):
    steps: int = Field(3, ge=1, le=1000, description="instant 'epochs' reported per trial")
    checkpoint: bool = Field(True, description="write a tiny checkpoint each step (exercises Tune storage)")
    value: float = Field(0.0, description="a number to sweep over; reported back as 'value'")


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Report ``steps`` epochs of a fake metric; tag the node and device the trial ran on."""
    device = core_device.pick_device()
    reporter.tags({"fer_ray.node": platform.node(), "fer_ray.device": str(device)})
    for step in range(1, trial.settings.steps + 1):
        checkpoint = None
        if trial.settings.checkpoint:
            checkpoint = reporter.work_dir / "checkpoint.pt"
            torch.save({"step": step}, checkpoint)
        reporter.epoch({"val_acc": step / trial.settings.steps, "value": trial.settings.value}, step, checkpoint)
    return {"value": trial.settings.value, "test_acc": 1.0, "cuda_devices": float(torch.cuda.device_count())}


EXPERIMENT = Experiment(
    name="probe",
    settings=Settings,
    evaluates_model=False,
    run=run,
    summary_metrics=("val_acc", "value"),
    epochs=lambda trial: trial.settings.steps,
)
