"""The emotion-transfer panel: transferred faces beside the real photographs of the same people.

Like fer_ray.core.plots, the builder returns a ``matplotlib.figure.Figure`` made without pyplot and
never shows it. Images are (…, 3, H, W) uint8 0..255 or float [0,1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from fer_ray.core.plots import as_cpu_float_images


def transfer_panel_figure(
    sources: torch.Tensor,
    transferred: torch.Tensor,
    real: torch.Tensor,
    classes: Sequence[str],
    transferred_predictions: Sequence[Sequence[str]],
    real_predictions: Sequence[Sequence[str]],
    source_predictions: Sequence[str],
    row_labels: Sequence[str],
    title: str = "",
) -> Figure:
    """Two panels side by side, one row per test person.

    Left: the source photo, then the generator's output for each of the C target ``classes``;
    right: the real photos of that person (same session and angle) with each expression.
    sources (P, 3, H, W); transferred and real (P, C, 3, H, W) (a missing real photo: all NaN, drawn
    blank). Captions under every image: the classifier's prediction (``*_predictions``: P lists of
    C strings; ``source_predictions``: P strings). row_labels: P strings (person, source expression).
    """
    people, count = int(sources.shape[0]), len(classes)
    if people == 0:
        raise ValueError("transfer_panel_figure needs at least one person")
    if tuple(transferred.shape[:2]) != (people, count) or tuple(real.shape[:2]) != (people, count):
        raise ValueError(f"transferred {tuple(transferred.shape)} and real {tuple(real.shape)} must be (P={people}, C={count}, 3, H, W)")
    figure = Figure(figsize=(1.5 * (2 * count + 1) + 0.6, 1.75 * people + 0.8), layout="constrained")
    generated_side, real_side = figure.subfigures(1, 2, width_ratios=[count + 1, count])
    generated_side.suptitle("transferred (column = target expression)", fontsize=10)
    real_side.suptitle("real photos of the same person", fontsize=10)
    left = generated_side.subplots(people, count + 1, squeeze=False)
    right = real_side.subplots(people, count, squeeze=False)
    for row in range(people):
        _show(left[row, 0], sources[row], f"pred: {source_predictions[row]}", "source" if row == 0 else None)
        left[row, 0].set_ylabel(str(row_labels[row]), fontsize=8)
        for column, name in enumerate(classes):
            heading = f"→ {name}" if row == 0 else None
            _show(left[row, column + 1], transferred[row, column], f"pred: {transferred_predictions[row][column]}", heading)
            _show(right[row, column], real[row, column], f"pred: {real_predictions[row][column]}", name if row == 0 else None)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def _show(axis, image: torch.Tensor, caption: str, heading: str | None) -> None:
    picture = as_cpu_float_images(image) if not torch.isnan(torch.as_tensor(image, dtype=torch.float32)).all() else None
    if picture is not None:
        axis.imshow(picture.permute(1, 2, 0).numpy())
        axis.set_xlabel(caption, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])
    if heading:
        axis.set_title(heading, fontsize=8)


def transfer_panel(
    transfer,
    classifier,
    dataset,
    split,
    people: int = 3,
    source_class: str = "neutral",
    title: str = "",
) -> Figure:
    """The panel for the first ``people`` (identity, session, angle) groups of ``split`` (sorted keys).

    transfer: (images float [0,1] (B, 3, H, W), targets int64 (B,)) -> images, as in
    transfer_metrics.score_cases. The source of each row is the group's ``source_class`` photo (the
    group's first photo when it has none). Every image is captioned with ``classifier``'s prediction.
    """
    from fer_ray.core.evaluate import as_float_images, predict_logits
    from fer_ray.core.transfer import group_positions

    classes = list(dataset.classes)
    groups = sorted(group_positions(dataset, split).items(), key=lambda item: tuple(map(str, item[0])))[:people]
    if not groups:
        raise ValueError("transfer_panel: the split holds no images")
    preferred = classes.index(source_class) if source_class in classes else -1
    source_positions = [members.get(preferred, min(members.values())) for _, members in groups]
    sources = as_float_images(split.images[source_positions]).float()
    count, shape = len(classes), tuple(sources.shape[1:])
    targets = torch.arange(count).repeat(len(groups))
    transferred = transfer(sources.repeat_interleave(count, dim=0), targets).float().clamp(0, 1).view(len(groups), count, *shape)
    real = torch.full((len(groups), count, *shape), float("nan"))
    for row, (_, members) in enumerate(groups):
        for label, position in members.items():
            real[row, label] = as_float_images(split.images[position]).float()

    def names(images: torch.Tensor) -> list[str]:
        flat = images.reshape(-1, *shape)
        known = ~torch.isnan(flat).flatten(1).any(dim=1)
        predicted = torch.zeros(flat.shape[0], dtype=torch.long)
        if known.any():
            predicted[known] = predict_logits(classifier, flat[known]).argmax(dim=1)
        return [classes[int(i)] if ok else "-" for i, ok in zip(predicted, known)]

    generated_names, real_names = names(transferred), names(real)
    labels = split.labels.cpu().numpy()
    return transfer_panel_figure(
        sources,
        transferred,
        real,
        classes,
        [generated_names[r * count : (r + 1) * count] for r in range(len(groups))],
        [real_names[r * count : (r + 1) * count] for r in range(len(groups))],
        names(sources),
        [f"{key[0]} {key[1] or ''} ({classes[int(labels[position])]})" for (key, _), position in zip(groups, source_positions)],
        title=title,
    )
