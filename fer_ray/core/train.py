"""Fine-tuning: fit() with per-epoch validation, early stopping, best-weights restore and resumable
checkpoints. The trained model's file (save_model / load_model) is fer_ray.core.model_file's.

A checkpoint holds only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``; it is written atomically (core.model_file.save_torch_file).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fer_ray.core.config import AugmentConfig, TrainConfig
from fer_ray.core.data.records import TensorSplit
from fer_ray.core.device import autocast, pick_device, use_channels_last
from fer_ray.core.evaluate import predict_logits
from fer_ray.core.model_file import (
    CheckpointError,
    cpu_state,
    load_torch_file,
    save_torch_file,
)

CHECKPOINT_FORMAT = "fer_ray.checkpoint/1"
#: StepLR for schedule="step": the lr is multiplied by this every ceil(epochs / STEP_PARTS) epochs.
STEP_GAMMA = 0.1
STEP_PARTS = 3
#: the smallest training batch: a batch of one cannot go through BatchNorm in training mode, so it is skipped
MIN_BATCH = 2


class TrainingError(ValueError):
    """Training cannot run on the given input (e.g. fewer than two training images)."""


@dataclass(frozen=True)
class EpochResult:
    """What one epoch did. Losses are mean cross-entropy per image (nats); accuracies in [0,1]
    (train: on the augmented batches, dropout on); val_* NaN when there is no validation split.
    lr: the schedule's learning rate for the epoch (warm-up steps use a fraction of it). seconds: the whole epoch (training + validation).
    images_per_s: training images / training seconds."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float

    def metrics(self) -> dict[str, float]:
        """The fields as a flat dict (the project's metric names: train_loss, val_acc, ...)."""
        return asdict(self)


@dataclass(frozen=True)
class FitResult:
    """best_val_acc / best_epoch: the epoch whose weights the model holds after fit (NaN / last
    epoch without validation data). epochs_run: the last epoch number reached, counting epochs of
    a resumed run. history: the epochs run by this call (1-based epoch numbers)."""

    best_val_acc: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[EpochResult] = field(default_factory=list)


@dataclass(frozen=True)
class StepOptions:
    """Numerics of a training step: bf16 autocast and channels_last layout (both CUDA-only gains)."""

    bf16: bool
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device) -> StepOptions:
        """What fit() uses: both on CUDA, both off on CPU."""
        return cls(bf16=device.type == "cuda", channels_last=use_channels_last(device))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    augment: AugmentConfig,
    generator: torch.Generator | None,
    options: StepOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch already on the model's device.

    images: uint8 (B, 3, S, S) 0..255; labels: int64 (B,). The batch becomes float [0,1], is
    augmented (if augment.enabled, random numbers from ``generator``), goes through the model under
    bf16 autocast if options.bf16, and cross-entropy is minimised by one optimizer step.
    Returns (summed loss over the batch, number of correct predictions) as 0-dim device tensors,
    so the caller decides when to synchronise with the device.
    """
    batch = images.float().div_(255.0)
    if augment.enabled:
        from fer_ray.core.data.augment import (
            augment_batch,  # the data package's module; imported late
        )

        batch = augment_batch(batch, augment, generator)
    if options.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    precision = autocast(batch.device) if options.bf16 else contextlib.nullcontext()
    with precision:
        logits = model(batch)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = (logits.detach().argmax(dim=1) == labels).sum()
    return loss.detach() * labels.shape[0], correct


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (with cfg.momentum) over the parameters that require grad."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch lr schedule: cosine to 0 over cfg.epochs, step (x STEP_GAMMA every
    ceil(epochs / STEP_PARTS) epochs), or constant. cfg.warmup_epochs is applied per step on top of
    it, in fit (warmup_factor)."""
    schedulers = torch.optim.lr_scheduler
    if cfg.schedule == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return schedulers.StepLR(optimizer, step_size=math.ceil(cfg.epochs / STEP_PARTS), gamma=STEP_GAMMA)
    return schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Optimizer steps in an epoch over ``count`` images (a last batch under MIN_BATCH is skipped)."""
    return count // batch_size + (1 if count % batch_size >= MIN_BATCH else 0)


def epoch_order(count: int, images_per_epoch: int | None, generator: torch.Generator) -> torch.Tensor:
    """Row indices (int64, on the generator's device) of the images one epoch trains on, in order: a
    permutation of range(count); given images_per_epoch, as many permutations as it takes, joined and
    cut at that length (every image once per pass, so a small training set repeats, not resamples)."""
    if images_per_epoch is None:
        return torch.randperm(count, generator=generator, device=generator.device)
    passes = math.ceil(images_per_epoch / count)
    return torch.cat([torch.randperm(count, generator=generator, device=generator.device) for _ in range(passes)])[:images_per_epoch]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The fraction of the scheduled lr that 0-based optimizer step ``step`` uses: (step + 1) / warmup_steps
    during the warm-up, 1.0 after it (and always when warmup_steps is 0)."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


@dataclass
class _Progress:
    """What fit() carries from epoch to epoch (and through a checkpoint)."""

    next_epoch: int = 1
    best_val_acc: float = -math.inf
    best_epoch: int = 0
    best_model_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False


def fit(
    model: nn.Module,
    train: TensorSplit,
    val: TensorSplit,
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochResult, Path | None], None] | None = None,
    checkpoint_path: Path | None = None,
    resume_from: Path | None = None,
    model_config: dict | None = None,
    checkpoint_every: int = 1,
) -> FitResult:
    """Train ``model`` on ``train`` for cfg.epochs epochs, validating on ``val`` after each.

    The model moves to ``device`` (default: pick_device()) and is left there holding the best
    validation weights. Every epoch draws its shuffling, augmentation and dropout randomness from
    seeds derived from (cfg.seed, epoch), so a resumed run repeats the uninterrupted one (this
    reseeds torch's global generator). Split images (uint8) are copied to the device once.
    Early stopping: after cfg.patience epochs without a higher val_acc (off without val data).
    checkpoint_path: written (atomically) after every ``checkpoint_every``-th epoch and after the last
    one (0: never), then on_epoch(result, checkpoint_path) is called (on_epoch(result, None) after an
    epoch without a checkpoint). resume_from: a checkpoint of this run; training continues at its next epoch.
    model_config: stored in checkpoints as given (plain values, e.g. ModelConfig.model_dump(mode="json")).
    Raises TrainingError for fewer than two training images, CheckpointError for a bad resume file.
    """
    if len(train) < 2:
        raise TrainingError(f"training needs at least 2 images, the training split has {len(train)}")
    device = device or pick_device()
    options = StepOptions.for_device(device)
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    progress = _Progress()
    if resume_from is not None:
        progress = _restore(load_checkpoint(resume_from), model, optimizer, scheduler)
    train_images, train_labels = train.images.to(device), train.labels.to(device)
    val_images, val_labels = val.images.to(device), val.labels.cpu()
    epoch_images = cfg.images_per_epoch or len(train)  # what one epoch trains on (epoch_order)
    epoch_steps = steps_per_epoch(epoch_images, cfg.batch_size)

    history: list[EpochResult] = []
    for epoch in range(progress.next_epoch, cfg.epochs + 1):
        if progress.stopped_early:
            break
        generator = _seed_epoch(cfg.seed, epoch, device)
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        warmup = _Warmup(first_step=(epoch - 1) * epoch_steps, steps=cfg.warmup_epochs * epoch_steps)
        train_loss, train_acc = _train_epoch(model, optimizer, train_images, train_labels, cfg, generator, options, warmup)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = _validate(model, val_images, val_labels, cfg.batch_size)
        scheduler.step()
        _record_best(progress, model, epoch, val_acc, cfg.patience)
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=lr,
            seconds=time.perf_counter() - started,
            images_per_s=epoch_images / train_seconds,
        )
        history.append(result)
        progress.next_epoch = epoch + 1
        saved = None
        if checkpoint_path is not None and _checkpoint_due(epoch, checkpoint_every, last=epoch == cfg.epochs or progress.stopped_early):
            saved = _save_checkpoint(checkpoint_path, model, optimizer, scheduler, progress, cfg, model_config, epoch)
        if on_epoch is not None:
            on_epoch(result, saved)

    if progress.best_model_state is not None:
        model.load_state_dict(progress.best_model_state)
    return FitResult(
        best_val_acc=progress.best_val_acc,
        best_epoch=progress.best_epoch,
        epochs_run=progress.next_epoch - 1,
        stopped_early=progress.stopped_early,
        history=history,
    )


def _seed_epoch(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Seed torch's global generators (dropout) and return the device generator for this epoch."""
    epoch_seed = seed * 1_000_003 + epoch  # distinct per (seed, epoch), independent of history
    torch.manual_seed(epoch_seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(epoch_seed)
    return generator


@dataclass(frozen=True)
class _Warmup:
    """The lr warm-up as one epoch sees it: the run's 0-based index of the epoch's first step, and the
    number of warm-up steps in the run (0: none)."""

    first_step: int
    steps: int


def _train_epoch(model, optimizer, images, labels, cfg: TrainConfig, generator, options, warmup: _Warmup) -> tuple[float, float]:
    """One epoch over the shuffled training images (epoch_order); returns (mean loss, accuracy). Steps
    inside the warm-up scale the scheduled lr by warmup_factor; the scheduled lr is back in place at the end."""
    model.train()
    scheduled = [group["lr"] for group in optimizer.param_groups]
    step = warmup.first_step
    order = epoch_order(images.shape[0], cfg.images_per_epoch, generator)
    count = order.shape[0]
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    seen = 0
    for start in range(0, count, cfg.batch_size):
        rows = order[start : start + cfg.batch_size]
        if rows.shape[0] < MIN_BATCH:
            continue
        if step < warmup.steps:
            for group, lr in zip(optimizer.param_groups, scheduled):
                group["lr"] = lr * warmup_factor(step, warmup.steps)
        batch_loss, batch_correct = train_step(
            model, optimizer, images[rows], labels[rows], augment=cfg.augment, generator=generator, options=options
        )
        step += 1
        loss_sum += batch_loss
        correct += batch_correct
        seen += rows.shape[0]
    if warmup.first_step < warmup.steps:  # the epoch scheduler steps from its own lr, not a warm-up fraction
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr
    return loss_sum.item() / seen, correct.item() / seen


def _validate(model, images, labels, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the validation images; (NaN, NaN) without any."""
    if images.shape[0] == 0:
        return math.nan, math.nan
    logits = predict_logits(model, images, batch_size=max(batch_size, 128))
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).sum().item() / labels.shape[0]
    return loss, accuracy


def _record_best(progress: _Progress, model: nn.Module, epoch: int, val_acc: float, patience: int | None) -> None:
    """Keep the weights of a new best val_acc; count epochs without one; decide to stop."""
    if math.isnan(val_acc):  # no validation data: the last epoch is the best
        progress.best_val_acc, progress.best_epoch, progress.best_model_state = math.nan, epoch, None
        return
    if val_acc > progress.best_val_acc:
        progress.best_val_acc, progress.best_epoch = val_acc, epoch
        progress.best_model_state = cpu_state(model)
        progress.epochs_without_improvement = 0
    else:
        progress.epochs_without_improvement += 1
    if patience is not None and progress.epochs_without_improvement >= patience:
        progress.stopped_early = True


def _checkpoint_due(epoch: int, every: int, last: bool) -> bool:
    """Whether ``epoch`` writes a checkpoint: every ``every``-th epoch and the last one; never for every == 0."""
    return every > 0 and (last or epoch % every == 0)


def _save_checkpoint(path, model, optimizer, scheduler, progress: _Progress, cfg, model_config, epoch) -> Path:
    """Returns ``path``. The weights are stored once: when this epoch is the best, best_model_state is None (and
    best_epoch == epoch) and load_checkpoint reads model_state as the best weights."""
    return save_torch_file(
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model_state": cpu_state(model),
            "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "best_val_acc": progress.best_val_acc,
            "best_epoch": progress.best_epoch,
            "best_model_state": None if progress.best_epoch == epoch else progress.best_model_state,
            "epochs_without_improvement": progress.epochs_without_improvement,
            "stopped_early": progress.stopped_early,
            "train_config": cfg.model_dump(mode="json"),
            "model_config": model_config,
        },
        Path(path),
    )


def _restore(checkpoint: dict, model, optimizer, scheduler) -> _Progress:
    """Load model / optimizer / scheduler state from a fit checkpoint; the progress to continue from."""
    try:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {checkpoint['path']} does not fit this model: {error}") from error
    scheduler.load_state_dict(checkpoint["scheduler_state"])
    return _Progress(
        next_epoch=checkpoint["epoch"] + 1,
        best_val_acc=checkpoint["best_val_acc"],
        best_epoch=checkpoint["best_epoch"],
        best_model_state=checkpoint["best_model_state"],
        epochs_without_improvement=checkpoint["epochs_without_improvement"],
        stopped_early=checkpoint["stopped_early"],
    )


def load_checkpoint(path: Path) -> dict:
    """A fit() checkpoint as a dict (weights_only load, tensors on the CPU), plus "path".

    Keys: format, epoch (last completed, 1-based), model_state, optimizer_state, scheduler_state,
    best_val_acc, best_epoch, best_model_state, epochs_without_improvement, stopped_early,
    train_config, model_config. best_model_state is the model_state when the last epoch was the best
    (the file holds those weights once). Raises CheckpointError naming the file when it is not one.
    """
    checkpoint = load_torch_file(Path(path), CHECKPOINT_FORMAT, "fit checkpoint")
    checkpoint["path"] = str(path)
    if checkpoint["best_model_state"] is None and checkpoint["best_epoch"] == checkpoint["epoch"]:
        checkpoint["best_model_state"] = checkpoint["model_state"]
    return checkpoint
