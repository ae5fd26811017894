"""fit(): learns real (synthetic) faces, checkpoints and resumes exactly, stops early, keeps the best
weights; save_model / load_model round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fer_ray.core.config import AugmentConfig, ModelConfig, SplitConfig, TrainConfig
from fer_ray.core.data.records import TensorSplit
from fer_ray.core.evaluate import predict_logits
from fer_ray.core.model_file import CheckpointError, load_model, save_model
from fer_ray.core.models import build_model
from fer_ray.core.train import (
    EpochResult,
    TrainingError,
    epoch_order,
    fit,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    steps_per_epoch,
    warmup_factor,
)

CPU = torch.device("cpu")
SMALL_MODEL = ModelConfig(arch="resnet18", weights="none", head=[16], dropout=0.2)


def _random_split(count: int, seed: int, size: int = 32, classes: int = 7) -> TensorSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    return TensorSplit(images=images, labels=labels, indices=np.arange(count, dtype=np.int64))


def _seeded_model(config: ModelConfig = SMALL_MODEL, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config, num_classes=7)


class _Crash(RuntimeError):
    """Stands in for a trial killed between two epochs."""


LEARN_IMAGE_SIZE = 32
LEARN_EPOCHS = 7
LEARN_LR = 1e-3


@pytest.fixture(scope="module")
def faces_to_learn(tmp_path_factory):
    """Train / val TensorSplits of synthetic faces: 30 people per gender, sessions A+B, 32 px.

    More people than the shared ``synthetic_root`` fixture (12 per gender): with ~200 training
    images a ResNet-18 from random init stays near 0.3 val accuracy; with ~480 it passes 0.5.
    """
    from fer_ray.core.config import SyntheticConfig
    from fer_ray.core.data.cache import load_image_tensors
    from fer_ray.core.data.kdef import read_kdef
    from fer_ray.core.data.splits import split_dataset
    from fer_ray.core.data.synthetic import generate_synthetic_kdef

    root = tmp_path_factory.mktemp("faces_to_learn")
    generate_synthetic_kdef(root, SyntheticConfig(identities=30, width=64, height=88, seed=0))
    dataset = read_kdef(root)
    images = load_image_tensors(dataset, LEARN_IMAGE_SIZE, tmp_path_factory.mktemp("cache"))
    split = split_dataset(dataset, SplitConfig(by="identity", val=0.25, test=0.15, seed=0))
    labels = torch.from_numpy(dataset.labels)

    def side(rows: np.ndarray) -> TensorSplit:
        index = torch.from_numpy(rows)
        return TensorSplit(images=images[index], labels=labels[index], indices=rows)

    return side(split.train), side(split.val)


@pytest.mark.slow
def test_resnet18_learns_synthetic_faces_above_chance(faces_to_learn):
    train, val = faces_to_learn
    cfg = TrainConfig(epochs=LEARN_EPOCHS, lr=LEARN_LR, batch_size=32, patience=None, seed=0, augment=AugmentConfig(enabled=False))
    model = _seeded_model(ModelConfig(arch="resnet18", weights="none", head=[], dropout=0.0))

    result = fit(model, train, val, cfg, device=CPU)

    val_accuracies = [round(e.val_acc, 3) for e in result.history]
    assert result.best_val_acc > 0.4, val_accuracies  # chance is 1/7 = 0.14
    assert [e.epoch for e in result.history] == list(range(1, LEARN_EPOCHS + 1))
    assert result.history[-1].train_loss < result.history[0].train_loss
    final_acc = (predict_logits(model, val.images).argmax(dim=1) == val.labels).float().mean().item()
    assert final_acc == pytest.approx(result.best_val_acc)  # the best weights are the ones kept


@pytest.mark.slow
def test_per_epoch_checkpoint_and_saved_model_predict_identically(tmp_path):
    train, val = _random_split(24, seed=1), _random_split(10, seed=2)
    model = _seeded_model()
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    seen = []

    def check_checkpoint(result: EpochResult, path):
        saved = load_checkpoint(path)
        rebuilt = build_model(SMALL_MODEL, num_classes=7)
        rebuilt.load_state_dict(saved["model_state"])
        assert saved["epoch"] == result.epoch
        assert saved["model_config"] == SMALL_MODEL.model_dump(mode="json")
        assert torch.equal(predict_logits(rebuilt, val.images), predict_logits(model, val.images))
        seen.append(result.epoch)

    cfg = TrainConfig(epochs=2, batch_size=8, patience=None)
    fit(
        model,
        train,
        val,
        cfg,
        device=CPU,
        checkpoint_path=checkpoint,
        on_epoch=check_checkpoint,
        model_config=SMALL_MODEL.model_dump(mode="json"),
    )

    assert seen == [1, 2]
    assert [p.name for p in checkpoint.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left
    model_file = save_model(tmp_path / "model.pt", model, SMALL_MODEL, ("a", "b", "c", "d", "e", "f", "g"))
    loaded, classes = load_model(model_file)
    assert classes == ("a", "b", "c", "d", "e", "f", "g")
    assert not loaded.training
    assert torch.equal(predict_logits(loaded, val.images), predict_logits(model, val.images))


@pytest.mark.slow
def test_resumed_run_continues_the_epoch_count_and_matches_an_uninterrupted_run(tmp_path):
    train, val = _random_split(24, seed=3), _random_split(10, seed=4)
    cfg = TrainConfig(epochs=4, batch_size=8, lr=3e-3, patience=None, augment=AugmentConfig(enabled=True))
    checkpoint = tmp_path / "checkpoint.pt"

    def crash_after_epoch_2(result: EpochResult, path):
        if result.epoch == 2:
            raise _Crash("killed")

    with pytest.raises(_Crash):
        fit(_seeded_model(), train, val, cfg, device=CPU, checkpoint_path=checkpoint, on_epoch=crash_after_epoch_2)
    resumed_model = _seeded_model(seed=99)  # its own init is overwritten by the checkpoint
    resumed = fit(resumed_model, train, val, cfg, device=CPU, resume_from=checkpoint)

    uninterrupted_model = _seeded_model()
    uninterrupted = fit(uninterrupted_model, train, val, cfg, device=CPU)

    assert [e.epoch for e in resumed.history] == [3, 4]
    assert resumed.epochs_run == 4
    assert [e.lr for e in resumed.history] == pytest.approx([e.lr for e in uninterrupted.history[2:]])
    assert [e.train_loss for e in resumed.history] == pytest.approx([e.train_loss for e in uninterrupted.history[2:]])
    assert [e.val_acc for e in resumed.history] == [e.val_acc for e in uninterrupted.history[2:]]
    assert (resumed.best_epoch, resumed.best_val_acc) == (uninterrupted.best_epoch, uninterrupted.best_val_acc)
    for name, tensor in uninterrupted_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], tensor, msg=name)


def test_resume_from_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    train, val = _random_split(8, seed=5), _random_split(4, seed=6)
    cfg = TrainConfig(epochs=1, batch_size=4)
    with pytest.raises(CheckpointError, match=r"absent\.pt does not exist"):
        fit(_seeded_model(), train, val, cfg, device=CPU, resume_from=tmp_path / "absent.pt")

    model_file = save_model(tmp_path / "model.pt", _seeded_model(), SMALL_MODEL, ("x",) * 7)
    with pytest.raises(CheckpointError, match=r"model\.pt is not a fer_ray fit checkpoint"):
        fit(_seeded_model(), train, val, cfg, device=CPU, resume_from=model_file)


@pytest.mark.slow
def test_early_stopping_when_validation_accuracy_stops_improving():
    train, val = _random_split(16, seed=7), _random_split(8, seed=8)
    frozen = ModelConfig(arch="resnet18", head=[], dropout=0.0, trainable="none")
    # an lr this small cannot change a prediction: val_acc stays where epoch 1 put it
    cfg = TrainConfig(epochs=10, batch_size=8, lr=1e-12, patience=2, augment=AugmentConfig(enabled=False))

    result = fit(_seeded_model(frozen), train, val, cfg, device=CPU)

    assert result.stopped_early
    assert [e.epoch for e in result.history] == [1, 2, 3]
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert len({e.val_acc for e in result.history}) == 1


@pytest.mark.slow
def test_fit_leaves_the_model_holding_its_best_validation_weights():
    train, val = _random_split(24, seed=9), _random_split(40, seed=10)
    cfg = TrainConfig(epochs=5, batch_size=8, lr=1e-2, patience=None, augment=AugmentConfig(enabled=False))
    model = _seeded_model()

    result = fit(model, train, val, cfg, device=CPU)

    accuracies = [e.val_acc for e in result.history]
    assert accuracies[-1] < max(accuracies)  # so keeping the best weights is visible
    assert result.best_epoch == 1 + int(np.argmax(accuracies))
    assert result.best_val_acc == max(accuracies)
    final_acc = (predict_logits(model, val.images).argmax(dim=1) == val.labels).float().mean().item()
    assert final_acc == pytest.approx(result.best_val_acc)


@pytest.mark.slow
def test_fit_without_validation_data_keeps_the_last_epoch():
    train = _random_split(12, seed=11)
    empty = TensorSplit(
        images=torch.zeros((0, 3, 32, 32), dtype=torch.uint8),
        labels=torch.zeros(0, dtype=torch.long),
        indices=np.zeros(0, dtype=np.int64),
    )
    cfg = TrainConfig(epochs=2, batch_size=6, patience=1)

    result = fit(_seeded_model(), train, empty, cfg, device=CPU)

    assert [e.epoch for e in result.history] == [1, 2]
    assert math.isnan(result.best_val_acc) and result.best_epoch == 2 and not result.stopped_early


def test_fit_needs_two_training_images():
    with pytest.raises(TrainingError, match=r"the training split has 1"):
        fit(_seeded_model(), _random_split(1, seed=12), _random_split(2, seed=13), TrainConfig(), device=CPU)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("cosine", [(1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4)]),
        ("step", [1.0, 1.0, 0.1, 0.1]),
        ("constant", [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_learning_rate_schedules(schedule, expected):
    cfg = TrainConfig(epochs=4, lr=1.0, schedule=schedule)
    optimizer = make_optimizer(torch.nn.Linear(2, 2), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(expected)


def _step_lrs(monkeypatch, cfg: TrainConfig, count: int) -> list[float]:
    """The lr every optimizer step of fit() used (train_step is wrapped to read it)."""
    import fer_ray.core.train as train_module

    seen = []
    original = train_module.train_step

    def recording(model, optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return original(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", recording)
    model = _seeded_model(ModelConfig(arch="resnet18", weights="none", head=[], dropout=0.0))
    fit(model, _random_split(count, seed=3, size=16), _random_split(4, seed=4, size=16), cfg, device=CPU)
    return seen


def test_warmup_raises_the_lr_linearly_over_its_steps_then_follows_the_schedule(monkeypatch):
    """10 images in batches of 4: 3 steps per epoch (4, 4, 2); one warm-up epoch = 3 steps."""
    cfg = TrainConfig(
        epochs=3, lr=0.3, schedule="cosine", batch_size=4, warmup_epochs=1, patience=None, augment=AugmentConfig(enabled=False)
    )
    lrs = _step_lrs(monkeypatch, cfg, count=10)
    cosine = [0.3 * (1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.3]), "step k of n uses (k+1)/n of the epoch's lr"
    assert lrs[3:] == pytest.approx([cosine[1]] * 3 + [cosine[2]] * 3), "after the warm-up: the unchanged cosine"


def test_warmup_across_two_epochs_and_none_by_default(monkeypatch):
    cfg = TrainConfig(
        epochs=2, lr=0.6, schedule="constant", batch_size=4, warmup_epochs=2, patience=None, augment=AugmentConfig(enabled=False)
    )
    assert _step_lrs(monkeypatch, cfg, count=10) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    default = TrainConfig(epochs=2, lr=0.6, schedule="cosine", batch_size=4, patience=None, augment=AugmentConfig(enabled=False))
    assert default.warmup_epochs == 0
    assert _step_lrs(monkeypatch, default, count=10) == pytest.approx([0.6] * 3 + [0.3] * 3), "0: the per-epoch schedule alone"


def test_warmup_factor_and_steps_per_epoch():
    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    assert [steps_per_epoch(count, 4) for count in (8, 9, 10, 3)] == [2, 2, 3, 1], "a last batch of one is skipped"


def test_optimizers_follow_the_config():
    layer = torch.nn.Linear(2, 2)
    sgd = make_optimizer(layer, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=0.01))
    adamw = make_optimizer(layer, TrainConfig(optimizer="adamw", lr=0.01))

    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 0.01


def test_checkpoint_stores_the_weights_once_and_reads_the_best_back(tmp_path):
    """An epoch that is the best so far is stored once (model_state), not again as best_model_state;
    a later worse epoch keeps the best weights beside the current ones."""
    train, val = _random_split(16, seed=7), _random_split(8, seed=8)
    checkpoint = tmp_path / "checkpoint.pt"
    stored = {}

    def keep(result: EpochResult, path):
        raw = torch.load(path, map_location="cpu", weights_only=True)
        stored[result.epoch] = (raw["best_epoch"], raw["best_model_state"] is None, path.stat().st_size, load_checkpoint(path))

    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, patience=None)
    fit(_seeded_model(), train, val, cfg, device=CPU, checkpoint_path=checkpoint, on_epoch=keep)
    weights = sum(t.numel() * t.element_size() for t in _seeded_model().state_dict().values())
    for epoch, (best_epoch, stored_once, size, loaded) in stored.items():
        assert stored_once == (best_epoch == epoch)
        assert loaded["best_model_state"] is not None
        if stored_once:
            assert loaded["best_model_state"] is loaded["model_state"]
            assert size < 3.3 * weights, "weights + AdamW's two moments, no second copy of the weights"
    assert stored[1][0] == 1 and stored[1][1], "the first epoch is always the best so far"


@pytest.mark.parametrize(
    ("every", "epochs", "patience", "expected"),
    [
        (1, 3, None, [1, 2, 3]),
        (2, 5, None, [2, 4, 5]),  # the last epoch always
        (0, 3, None, []),  # none: a retried trial starts over
        (3, 10, 2, [3]),  # early stopping after epoch 3 (val_acc never rises: lr 1e-12) is the last epoch
    ],
)
def test_checkpoint_every_writes_the_chosen_epochs_and_the_last(tmp_path, every, epochs, patience, expected):
    train, val = _random_split(16, seed=7), _random_split(8, seed=8)
    frozen = ModelConfig(arch="resnet18", head=[], dropout=0.0, trainable="none")
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-12, patience=patience, augment=AugmentConfig(enabled=False))
    checkpoint = tmp_path / "checkpoint.pt"
    reported: dict[int, int | None] = {}

    def keep(result: EpochResult, path):
        reported[result.epoch] = None if path is None else load_checkpoint(path)["epoch"]

    fit(_seeded_model(frozen), train, val, cfg, device=CPU, checkpoint_path=checkpoint, on_epoch=keep, checkpoint_every=every)

    assert [epoch for epoch, saved in reported.items() if saved is not None] == expected
    assert all(saved in (None, epoch) for epoch, saved in reported.items())  # the file on_epoch gets is that epoch's
    assert checkpoint.exists() == bool(expected)


def test_epoch_order_repeats_whole_reshuffled_passes_up_to_images_per_epoch():
    generator = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(5, None, generator).tolist()) == [0, 1, 2, 3, 4]
    order = epoch_order(4, 10, torch.Generator().manual_seed(1)).tolist()
    assert len(order) == 10
    assert sorted(order[:4]) == sorted(order[4:8]) == [0, 1, 2, 3], "every image once per pass"
    assert len(set(order[8:])) == 2, "the cut pass holds distinct images"
    assert len(set(epoch_order(6, 3, generator).tolist())) == 3, "fewer than one pass: a cut permutation"


def test_images_per_epoch_gives_a_small_training_set_the_steps_of_a_large_one():
    train, val = _random_split(12, seed=11), _random_split(6, seed=12)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-3, images_per_epoch=40, warmup_epochs=1, patience=None,
                      augment=AugmentConfig(enabled=False))  # fmt: skip
    steps = []
    model = _seeded_model()
    model.register_forward_pre_hook(lambda module, args: steps.append(args[0].shape[0]) if module.training else None)

    fit(model, train, val, cfg, device=CPU)

    assert steps == [4] * 20, "40 images per epoch in batches of 4, for 2 epochs (12 training images)"
