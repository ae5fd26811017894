"""Figure builder of the saliency experiment: an image and its saliency maps in one row.

Like fer_ray.core.plots, every builder returns a ``matplotlib.figure.Figure`` made without pyplot
(nothing registered globally, Agg rendering on savefig) and never shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure


def saliency_row_figure(
    image, maps: Mapping[str, torch.Tensor], title: str, overlay: Sequence[str] = (), prediction: tuple[str, str] | None = None
) -> Figure:
    """The image and its saliency panels in one row.

    image: (3, H, W) float [0,1] or uint8. maps: panel title -> (H, W) map in [0,1] (drawn in gray,
    or as a 'jet' heat map over the grayscale image for titles in ``overlay``) or (3, H, W) RGB in
    [0,1]. prediction: (text, colour) titling the image (fer_ray.core.plots.prediction_labels: "true
    happy / pred sad", green right, red wrong); None: the title "image". Returns a Figure with
    1 + len(maps) axes.
    """
    picture = torch.as_tensor(image).detach().cpu()
    picture = picture.float() / 255.0 if picture.dtype == torch.uint8 else picture.float().clamp(0, 1)
    if picture.ndim != 3 or picture.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(picture.shape)}")
    figure = Figure(figsize=(1.9 * (len(maps) + 1), 2.4), layout="constrained")
    axes = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(picture.permute(1, 2, 0).numpy())
    text, colour = prediction or ("image", "black")
    axes[0].set_title(text, fontsize=8, color=colour)
    gray = picture.mean(dim=0).numpy()
    for axis, (name, saliency) in zip(axes[1:], maps.items()):
        values = torch.as_tensor(saliency).detach().cpu().float()
        if values.ndim == 3:
            axis.imshow(values.permute(1, 2, 0).clamp(0, 1).numpy())
        elif name in overlay:
            axis.imshow(gray, cmap="gray", vmin=0, vmax=1)
            axis.imshow(values.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        else:
            axis.imshow(values.numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(name, fontsize=8)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=9)
    return figure
