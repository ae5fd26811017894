"""Figure builders render real PNGs with the expected axes and annotations."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fer_ray.core.plots import augmentation_grid, confusion_matrix_figure

CLASSES = ("afraid", "angry", "happy")


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def test_augmentation_grid_has_one_axis_per_picture_and_renders():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    variants = [torch.rand(2, 3, 16, 16) for _ in range(3)]

    figure = augmentation_grid(images, variants)

    assert len(figure.axes) == 2 * 4
    assert [figure.axes[k].get_title() for k in range(4)] == ["original", "augmented 1", "augmented 2", "augmented 3"]
    # the first column shows the original pixels (uint8 -> [0,1])
    shown = figure.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), images[0].permute(1, 2, 0).numpy() / 255.0, atol=1e-6)
    png = _png_bytes(figure)
    assert png.startswith(b"\x89PNG") and len(png) > 5_000


def test_augmentation_grid_accepts_a_stacked_tensor_and_titles():
    images = torch.rand(3, 3, 12, 12)
    stacked = torch.rand(3, 2, 3, 12, 12)

    figure = augmentation_grid(images, stacked, titles=["in", "a", "b"])

    assert len(figure.axes) == 3 * 3
    assert [figure.axes[k].get_title() for k in range(3)] == ["in", "a", "b"]


def test_augmentation_grid_rejects_mismatched_variants():
    with pytest.raises(ValueError, match=r"do not match images"):
        augmentation_grid(torch.rand(2, 3, 8, 8), [torch.rand(3, 3, 8, 8)])


def test_confusion_matrix_figure_annotates_row_normalised_values():
    confusion = [[3, 1, 0], [0, 2, 2], [0, 0, 0]]

    figure = confusion_matrix_figure(confusion, CLASSES, title="test set")

    matrix_axis = figure.axes[0]
    assert len(figure.axes) == 2  # the matrix and its colorbar
    assert matrix_axis.get_title() == "test set"
    texts = [t.get_text() for t in matrix_axis.texts]
    assert texts == ["0.75", "0.25", "0.00", "0.00", "0.50", "0.50", "0.00", "0.00", "0.00"]
    assert [t.get_text() for t in matrix_axis.get_yticklabels()] == list(CLASSES)
    png = _png_bytes(figure)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_confusion_matrix_figure_shows_counts_without_normalising():
    figure = confusion_matrix_figure(np.array([[5, 1], [2, 7]]), ("a", "b"), normalize=False)

    assert [t.get_text() for t in figure.axes[0].texts] == ["5", "1", "2", "7"]


def test_confusion_matrix_figure_rejects_a_matrix_of_another_size():
    with pytest.raises(ValueError, match=r"does not match 3 classes"):
        confusion_matrix_figure([[1, 0], [0, 1]], CLASSES)


def test_metric_curve_figure_draws_mean_band_and_labels():
    import io

    import numpy as np

    from fer_ray.core.plots import metric_curve_figure

    figure = metric_curve_figure(
        [0.1, 0.5, 0.2],
        [0.6, 0.9, 0.7],
        [0.5, 0.85, np.nan],
        [0.7, 0.95, np.nan],
        xlabel="fraction",
        ylabel="acc",
        title="t",
        point_labels=["a", "c", "b"],
    )
    axis = figure.axes[0]
    line = axis.lines[0]
    assert list(line.get_xdata()) == [0.1, 0.2, 0.5], "points sorted by x"
    assert list(line.get_ydata()) == [0.6, 0.7, 0.9]
    assert [t.get_text() for t in axis.texts] == ["a", "b", "c"]
    assert len(axis.collections) == 1, "one CI band (NaN intervals left out)"
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.tell() > 5000


def test_repeats_boxplot_keeps_the_data_readable_when_the_reference_is_far_off():
    from fer_ray.core.robustness_plots import repeats_boxplot_figure

    values = {"train seed 0": [0.21, 0.24, 0.26], "train seed 1": [0.28, 0.30, 0.25]}
    reference = {"median": 0.67, "min": 0.65, "max": 0.68}
    figure = repeats_boxplot_figure(values, "test accuracy", "repeats", reference=reference)
    axis = figure.axes[0]
    low, high = axis.get_ylim()
    assert low <= 0.21 and high >= 0.30
    assert high - low < 0.2, "the y-axis must span the data, not stretch to the reference at 0.67"
    notes = " ".join(text.get_text() for text in axis.texts)
    assert "above this range" in notes and "median 0.67" in notes and "max 0.68" in notes
    assert [tick.get_text() for tick in axis.get_xticklabels()] == ["train seed 0", "train seed 1"]
    assert axis.get_xlabel() == "model (training source)"
    assert _png_bytes(figure).startswith(b"\x89PNG")


def test_repeats_boxplot_draws_a_reference_inside_the_data_range_as_lines():
    from fer_ray.core.robustness_plots import repeats_boxplot_figure

    figure = repeats_boxplot_figure({"train seed 0": [0.60, 0.70, 0.66]}, "acc", "t", reference={"median": 0.67, "min": 0.65, "max": 0.68})
    axis = figure.axes[0]
    assert len([line for line in axis.get_lines() if line.get_label().startswith("reference study")]) == 3
    assert not axis.texts
