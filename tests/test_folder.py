"""Folder-per-class reader: class naming, optional identities, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fer_ray.core.config import DataConfig
from fer_ray.core.data import EXPRESSIONS, DataError
from fer_ray.core.data.datasets import read_dataset
from fer_ray.core.data.folder import read_image_folder


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (120, 80, 40)).save(path)


def test_expression_folders_use_expression_order(tmp_path):
    # FER-2013-style names ("fear", "surprise") and odd case still map onto the KDEF classes.
    files = {"surprise": ["p1_a.png"], "Happy": ["p1_b.jpg", "p2_c.JPG"], "fear": ["p2_d.jpeg"]}
    for folder, names in files.items():
        for name in names:
            _image(tmp_path / folder / name)
    (tmp_path / "Happy" / "notes.txt").write_text("not an image")
    _image(tmp_path / ".ipynb_checkpoints" / "x.png")  # hidden folders are not classes

    dataset = read_image_folder(tmp_path)

    assert dataset.name == "folder"
    assert dataset.classes == ("afraid", "happy", "surprised")
    assert sorted((im.path.name, im.expression) for im in dataset.images) == [
        ("p1_a.png", "surprised"),
        ("p1_b.jpg", "happy"),
        ("p2_c.JPG", "happy"),
        ("p2_d.jpeg", "afraid"),
    ]
    assert all(im.identity is None for im in dataset.images)
    assert dataset.labels.tolist() == [dataset.classes.index(im.expression) for im in dataset.images]


def test_all_seven_expression_folders_give_expressions(tmp_path):
    for name in reversed(EXPRESSIONS):
        _image(tmp_path / name / "x.png")
    assert read_image_folder(tmp_path).classes == EXPRESSIONS


def test_other_folder_names_become_sorted_classes(tmp_path):
    for folder in ("zebra", "happy", "apple"):
        _image(tmp_path / folder / "one.png")
        _image(tmp_path / folder / "nested" / "two.png")
    dataset = read_image_folder(tmp_path)
    assert dataset.classes == ("apple", "happy", "zebra")
    assert len(dataset) == 6
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_identity_pattern(tmp_path):
    for folder, name in [("happy", "Anna01_x.png"), ("sad", "Anna01_y.png"), ("sad", "Bob7_z.png")]:
        _image(tmp_path / folder / name)
    dataset = read_image_folder(tmp_path, identity_pattern=r"^(?P<identity>[A-Za-z]+\d+)_")
    assert sorted(dataset.identities.tolist()) == ["Anna01", "Anna01", "Bob7"]


def test_identity_pattern_must_match_every_file(tmp_path):
    _image(tmp_path / "happy" / "Anna01_x.png")
    _image(tmp_path / "sad" / "unnamed.png")
    with pytest.raises(DataError, match=r"1 file name.*unnamed\.png"):
        read_image_folder(tmp_path, identity_pattern=r"^(?P<identity>[A-Za-z]+\d+)_")


@pytest.mark.parametrize("pattern, problem", [(r"^([a-z]+)_", "no named group"), (r"(?P<identity>[a-z", "not a valid")])
def test_bad_identity_pattern_is_named(tmp_path, pattern, problem):
    _image(tmp_path / "happy" / "a_1.png")
    with pytest.raises(DataError, match=problem):
        read_image_folder(tmp_path, identity_pattern=pattern)


def test_empty_class_folder_is_named(tmp_path):
    _image(tmp_path / "happy" / "a.png")
    (tmp_path / "sad").mkdir()
    (tmp_path / "sad" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"sad'\] hold no images"):
        read_image_folder(tmp_path)


def test_no_class_folders_or_no_root(tmp_path):
    _image(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path)
    with pytest.raises(DataError, match="missing_root"):
        read_image_folder(tmp_path / "missing_root")


def test_read_dataset_dispatches_folder(tmp_path):
    _image(tmp_path / "happy" / "a.png")
    _image(tmp_path / "sad" / "b.png")
    dataset = read_dataset(DataConfig(dataset="folder", root=tmp_path))
    assert dataset.classes == ("happy", "sad") and len(dataset) == 2


def test_listing_equals_torchvisions_image_folder_listing(tmp_path):
    """folder.list_images is torchvision's make_dataset written out (so reading needs no torch): same
    extensions, same order, nested folders and odd-case extensions included."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from fer_ray.core.data.folder import IMG_EXTENSIONS as OURS
    from fer_ray.core.data.folder import list_images

    for relative in ["b/x2.PNG", "b/x1.jpg", "b/deep/z.webp", "b/deep/a.txt", "a/q.TIFF", "a/p.bmp", "c/readme.md"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    folders = {"a": 0, "b": 1, "c": 2}
    assert OURS == IMG_EXTENSIONS
    expected = make_dataset(str(tmp_path), folders, extensions=IMG_EXTENSIONS, allow_empty=True)
    assert list_images(tmp_path, folders) == expected
    assert len(expected) == 5
