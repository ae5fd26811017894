"""Emotion transfer core: pairs, the conditional generator, its training, the metrics and the panel.

The constructed dataset: 16 px images; a person is a dark background colour, an expression is a white
8x2 block (rows 6..13) at columns 2e, 2e+1. A hand-written classifier reads which block is white, so target
accuracy, L1 and identity values can be computed by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fer_ray.core.data.records import EXPRESSIONS, FaceDataset, FaceImage, TensorSplit
from fer_ray.core.transfer import (
    ExpressionCritic,
    GeneratorConfig,
    TransferError,
    TransferGenerator,
    build_generator,
    generator_state,
    group_positions,
    load_generator,
    mean_pair_l1,
    paired_cases,
    train_expression_critic,
    train_generator,
    translate,
)
from fer_ray.core.transfer_metrics import (
    embed,
    mean_faces,
    score_cases,
    subject_mean_ci,
    summarize,
)
from fer_ray.core.transfer_plots import transfer_panel

SIZE = 16
BACKGROUNDS = {"F01": (0.1, 0.2, 0.5), "F02": (0.5, 0.1, 0.1), "M01": (0.2, 0.45, 0.1), "M02": (0.35, 0.35, 0.35)}


def constructed(people=("F01", "F02"), sessions=("A",)) -> tuple[FaceDataset, TensorSplit]:
    """One image per (person, session, expression): the person's background + the expression's block."""
    records, pictures = [], []
    for person in people:
        for session in sessions:
            for label, expression in enumerate(EXPRESSIONS):
                records.append(FaceImage(Path(f"/x/{session}{person}{label}.jpg"), expression, person, person[0], "S", session))
                image = torch.tensor(BACKGROUNDS[person]).view(3, 1, 1).repeat(1, SIZE, SIZE)
                if session == "B":
                    image = image * 0.9
                image[:, 6:14, 2 * label : 2 * label + 2] = 1.0
                pictures.append(image)
    dataset = FaceDataset("constructed", tuple(records))
    images = (torch.stack(pictures) * 255).round().to(torch.uint8)
    split = TensorSplit(images, torch.from_numpy(dataset.labels), np.arange(len(records)))
    return dataset, split


class BlockReader(nn.Module):
    """Logit of class e = the darkest channel's mean over block e (white block -> 1, background < 0.6)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        darkest = images.min(dim=1).values  # (B, H, W)
        return torch.stack([darkest[:, 6:14, 2 * e : 2 * e + 2].mean(dim=(1, 2)) for e in range(7)], dim=1)


def oracle(split: TensorSplit, pairs):
    """A 'generator' that returns the real target photo of each case, in order (for the metrics)."""
    queue = list(pairs.target)

    def transfer(images, targets):
        rows = [queue.pop(0) for _ in range(images.shape[0])]
        return split.images[rows].float() / 255

    return transfer


# ------------------------------------------------------------------------------------------ pairs


def test_pairs_stay_within_person_session_and_angle():
    dataset, split = constructed(people=("F01", "F02"), sessions=("A", "B"))
    pairs = paired_cases(dataset, split)
    assert len(pairs) == 4 * 7 * 6  # 2 people x 2 sessions, 7 sources x 6 other targets
    assert len(paired_cases(dataset, split, include_same=True)) == 4 * 49
    sources = [dataset.images[i] for i in split.indices[pairs.source]]
    targets = [dataset.images[i] for i in split.indices[pairs.target]]
    assert all((s.identity, s.session, s.angle) == (t.identity, t.session, t.angle) for s, t in zip(sources, targets))
    assert all(s.expression != t.expression for s, t in zip(sources, targets))
    assert [EXPRESSIONS.index(t.expression) for t in targets] == pairs.target_label.tolist()
    assert pairs.subject.tolist() == [s.identity for s in sources]


def test_two_photos_of_one_expression_in_a_group_is_an_error():
    dataset, split = constructed(people=("F01",))
    doubled = FaceDataset("d", dataset.images + dataset.images[:1])
    images = torch.cat([split.images, split.images[:1]])
    with pytest.raises(TransferError, match="F01.*'afraid'"):
        group_positions(doubled, TensorSplit(images, torch.from_numpy(doubled.labels), np.arange(len(doubled))))


# -------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("size", [16, 21])
def test_generator_keeps_shape_and_range_and_starts_as_identity(size):
    torch.manual_seed(0)
    generator = TransferGenerator(width=8)
    images = torch.rand(3, 3, size, size) * 0.9 + 0.05
    output = generator(images, torch.tensor([0, 3, 6]))
    assert output.shape == images.shape
    assert torch.allclose(output, images, atol=1e-5)  # zero residual at initialisation


def test_exposure_head_rescales_the_whole_source_per_channel():
    generator = TransferGenerator(width=8)
    with torch.no_grad():  # the residual stays zero (untrained); only the global gain path is set
        generator.exposure.bias.copy_(torch.atanh(torch.tensor([0.04, 0.0, -0.08]) / 0.25))
    images = 0.2 + 0.6 * torch.rand(2, 3, 16, 16)
    expected = images * torch.tensor([1.04, 1.0, 0.92]).view(1, 3, 1, 1)
    torch.testing.assert_close(generator(images, torch.tensor([0, 3])), expected)


def test_changing_the_target_changes_the_output():
    torch.manual_seed(0)
    generator = TransferGenerator(width=8)
    nn.init.normal_(generator.out.weight, std=0.1)  # as after some training: a non-zero residual
    image = torch.rand(1, 3, 16, 16).repeat(7, 1, 1, 1)
    output = generator(image, torch.arange(7))
    assert ((0.0 <= output) & (output <= 1.0)).all()
    gaps = [(output[a] - output[b]).abs().mean().item() for a in range(7) for b in range(a + 1, 7)]
    assert min(gaps) > 1e-4


def test_bad_target_is_an_error_naming_the_range():
    generator = TransferGenerator(width=8)
    with pytest.raises(TransferError, match="0..6"):
        generator(torch.rand(2, 3, 16, 16), torch.tensor([0, 7]))


def test_training_on_a_tiny_set_learns_the_transfer_and_keeps_the_identity_target(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dataset, split = constructed(people=("F01", "F02"))
    generator = TransferGenerator(width=16)
    cfg = GeneratorConfig(width=16, epochs=100, batch_size=7, lr=3e-3, identity_fraction=0.3)
    pairs = paired_cases(dataset, split)
    before = mean_pair_l1(generator, split, pairs)  # the untrained generator copies its input
    history = train_generator(generator, split, group_positions(dataset, split), cfg)
    assert len(history) == 100 and np.isnan(history[-1].val_l1)
    assert mean_pair_l1(generator, split, pairs) < 0.75 * before  # measured: 0.67
    own = translate(generator, split.images, split.labels)
    assert (own - split.images.float() / 255).abs().mean().item() < 0.03  # the identity target reconstructs
    saved = tmp_path / "generator.pt"
    torch.save(generator_state(generator, EXPRESSIONS), saved)
    loaded, classes = load_generator(saved)
    assert classes == EXPRESSIONS
    assert torch.equal(translate(loaded, split.images, split.labels), own)


# ---------------------------------------------------------------------------------------- metrics


def test_copy_generator_scores_exactly_the_copy_baseline():
    dataset, split = constructed(people=("F01", "F02", "M01"))
    pairs = paired_cases(dataset, split)
    means = mean_faces(split.images, split.labels, 7)
    scores = score_cases(lambda x, t: x, BlockReader(), split, dataset.identities, pairs, means, batch_size=10)
    np.testing.assert_array_equal(scores.l1_real, scores.l1_copy)
    metrics = summarize(scores, EXPRESSIONS, n_boot=200)
    assert metrics["transfer_l1_real"] == metrics["transfer_l1_copy"]
    assert metrics["transfer_l1_gain_copy"] == 0.0
    assert metrics["transfer_target_acc"] == 0.0  # the copy keeps the source's block
    assert metrics["test_acc"] == 1.0 and metrics["transfer_cases"] == 3 * 42 and metrics["transfer_test_people"] == 3
    # by hand: source and target differ in two 8x2 blocks (background <-> white) over 16x16x3 values
    for index, (source, target) in enumerate(zip(pairs.source, pairs.target)):
        person = BACKGROUNDS[dataset.images[target].identity]
        background = np.round(np.array(person) * 255) / 255
        expected = 2 * 16 * np.sum(1.0 - background) / (3 * SIZE * SIZE)
        assert scores.l1_copy[index] == pytest.approx(expected, abs=1e-6)
    # the copy sits nearest to its own person: the background colour dominates the face interior
    assert metrics["transfer_identity_top1"] == metrics["transfer_identity_top1_copy"] == 1.0


def test_oracle_generator_is_perfect_and_mean_baseline_is_hand_computed():
    dataset, split = constructed(people=("F01", "F02"))
    pairs = paired_cases(dataset, split)
    means = mean_faces(split.images, split.labels, 7)
    # mean face of class e: the average background of the two people, with the white block at e
    average = (np.round(np.array(BACKGROUNDS["F01"]) * 255) + np.round(np.array(BACKGROUNDS["F02"]) * 255)) / 510
    assert means[3, :, 0, 0].numpy() == pytest.approx(average, abs=1e-6)
    assert means[3, :, 12, 6].numpy() == pytest.approx([1.0, 1.0, 1.0])
    scores = score_cases(oracle(split, pairs), BlockReader(), split, dataset.identities, pairs, means, batch_size=16)
    metrics = summarize(scores, EXPRESSIONS, n_boot=200)
    assert metrics["transfer_l1_real"] == 0.0
    assert metrics["transfer_target_acc"] == 1.0 and metrics["transfer_target_acc/happy"] == 1.0
    assert metrics["transfer_identity_top1"] == 1.0
    # mean baseline: every pixel off by |background - average|, the block exact
    own = np.round(np.array(BACKGROUNDS["F01"]) * 255) / 255
    f01 = np.array([s == "F01" for s in pairs.subject])
    assert scores.l1_mean[f01] == pytest.approx(np.abs(own - average).sum() * (SIZE * SIZE - 16) / (3 * SIZE * SIZE), abs=1e-6)
    assert metrics["transfer_l1_gain_mean"] > 0 and metrics["transfer_l1_gain_mean/subject_ci_low"] > 0


def test_identity_embedding_ignores_brightness_hair_and_background_but_not_the_face_interior():
    torch.manual_seed(0)
    faces = 0.2 + 0.6 * torch.rand(2, 3, 48, 48)
    brighter = faces * 1.06  # a photo's exposure gain
    reframed = faces.clone()
    reframed[:, :, :12] = 0.9  # hair / backdrop above the interior (rows 12..41, columns 12..35)
    reframed[:, :, :, :12] = 0.1
    torch.testing.assert_close(embed(brighter), embed(faces))
    torch.testing.assert_close(embed(reframed), embed(faces))
    mouth = faces.clone()
    mouth[:, :, 34:40, 18:30] = 0.0  # an open mouth in the interior moves the embedding
    assert (embed(mouth) - embed(faces)).norm(dim=1).min() > 0.5


def test_subject_mean_ci_resamples_people_not_cases():
    values = np.array([1.0, 1.0, 1.0, 0.0])
    subjects = np.array(["a", "a", "a", "b"])
    interval = subject_mean_ci(values, subjects, n_boot=4000, seed=1)
    assert interval["estimate"] == 0.75 and interval["subjects"] == 2 and interval["n"] == 4
    # the only replicates: {a,a} -> 1, {b,b} -> 0, {a,b} -> 0.75 (probabilities 1/4, 1/4, 1/2)
    assert interval["low"] == 0.0 and interval["high"] == 1.0
    single = subject_mean_ci([0.2, 0.4], ["a", "a"])
    assert single["estimate"] == pytest.approx(0.3) and np.isnan(single["low"]) and np.isnan(single["high"])


def test_panel_shows_source_targets_and_real_photos():
    dataset, split = constructed(people=("F01", "F02"))
    figure = transfer_panel(lambda x, t: x, BlockReader(), dataset, split, people=2)
    generated_side, real_side = figure.subfigs
    assert len(generated_side.axes) == 2 * 8 and len(real_side.axes) == 2 * 7
    assert generated_side.axes[0].get_xlabel() == "pred: neutral"  # the copied neutral source
    assert real_side.axes[3].get_xlabel() == "pred: happy" and real_side.axes[3].get_title() == "happy"


# ------------------------------------------------------------------------------ expression prior


def test_expression_prior_alone_moves_the_expression_and_survives_save_and_load(tmp_path):
    """The critic (trained on the split) recognises the source's block, so the untrained prior generator
    (zero residual) outputs source + mean face of the target - mean face of the source's expression:
    BlockReader reads the target on every case and the output is far closer to the real photo than a copy."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dataset, split = constructed(people=("F01", "F02", "M01"))
    cfg = GeneratorConfig(width=8, critic_epochs=150, critic_width=8)
    critic = train_expression_critic(split, 7, cfg)
    assert (critic(split.images.float() / 255).argmax(dim=1) == split.labels).all()
    assert not any(parameter.requires_grad for parameter in critic.parameters())
    generator = build_generator(cfg, 7, SIZE)
    generator.set_prior(critic, mean_faces(split.images, split.labels, 7))
    pairs = paired_cases(dataset, split)
    means = mean_faces(split.images, split.labels, 7)
    scores = score_cases(lambda x, t: translate(generator, x, t), BlockReader(), split, dataset.identities, pairs, means)
    metrics = summarize(scores, EXPRESSIONS, n_boot=100)
    assert metrics["transfer_target_acc"] == 1.0
    assert metrics["transfer_l1_real"] < 0.5 * metrics["transfer_l1_copy"]
    assert metrics["transfer_identity_top1"] == metrics["transfer_identity_top1_copy"] == 1.0
    generator.train()
    assert not generator.critic.training  # the frozen critic keeps its BatchNorm statistics
    saved = tmp_path / "prior.pt"
    torch.save(generator_state(generator, EXPRESSIONS), saved)
    loaded, _ = load_generator(saved)
    assert loaded.prior_size == SIZE
    assert torch.equal(translate(loaded, split.images, split.labels), translate(generator, split.images, split.labels))


def test_a_generator_without_prior_refuses_one():
    with pytest.raises(TransferError, match="prior_size=None"):
        TransferGenerator(width=8).set_prior(ExpressionCritic(7, 8), torch.zeros(7, 3, SIZE, SIZE))
