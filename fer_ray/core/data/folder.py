"""Reader for any folder-per-class image dataset (torchvision ImageFolder layout).

    root/<class>/<image>      (images may sit in nested folders inside a class folder)

Class names: when every folder name is one of the 7 KDEF classes or a common alias of one
("fear", "anger", "disgust", "happiness", "sadness", "surprise"; any case), the classes are the
KDEF classes present, in EXPRESSIONS order, so labels line up with KDEF-trained models. Otherwise
the sorted folder names are the classes. Identity is optional: a regex with a named group
``identity`` searched in each file name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fer_ray.core.data.records import EXPRESSIONS, DataError, FaceDataset, FaceImage

#: Folder names (lower case) accepted as KDEF classes besides the class names themselves.
EXPRESSION_ALIASES: dict[str, str] = {
    "fear": "afraid",
    "fearful": "afraid",
    "anger": "angry",
    "disgust": "disgusted",
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprised",
}
#: How many offending files an error spells out before it only counts the rest.
LISTED_FILES = 20
#: The image extensions torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS;
#: tests/test_folder.py checks they agree).
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def read_image_folder(root: Path, identity_pattern: str | None = None) -> FaceDataset:
    """Every image (extensions as torchvision's ImageFolder) under root/<class>/, sorted by path.

    identity_pattern: regex with a named group ``identity``, searched in the file name (not the
    folder), e.g. r"^(?P<identity>[A-Za-z]+\\d+)_"; None leaves identity None (splits then go
    image by image). Every file must match when a pattern is given.
    Returns a FaceDataset named "folder". Raises DataError for a missing folder, no class folders,
    a class folder without images, a bad pattern, or files the pattern does not match.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (or is not a folder)")
    identity_regex = _compiled_identity_pattern(identity_pattern)
    folder_to_class, classes = _class_of_folder(root)

    class_index = {name: i for i, name in enumerate(classes)}
    folder_to_index = {folder: class_index[name] for folder, name in folder_to_class.items()}
    samples = list_images(root, folder_to_index)
    _require_images_in_every_folder(root, folder_to_class, samples)

    images = tuple(
        FaceImage(
            path=Path(path),
            expression=classes[index],
            identity=None if identity_regex is None else _identity(identity_regex, Path(path)),
        )
        for path, index in samples
    )
    if identity_regex is not None:
        _require_identities(root, identity_pattern, images)
    return FaceDataset(name="folder", images=images, classes=classes)


def list_images(root: Path, folder_to_index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, class index) of every image file under root/<folder>/ (nested folders and links
    followed), folders in sorted order, files sorted within each folder.

    The same listing as torchvision.datasets.folder.make_dataset(..., extensions=IMG_EXTENSIONS,
    allow_empty=True) (tests/test_folder.py compares them), written out here because importing
    torchvision imports torch (~2 s): the driver's pre-flight and --dry-run read datasets without it.
    """
    samples = []
    for folder in sorted(folder_to_index):
        for where, _, names in sorted(os.walk(root / folder, followlinks=True)):
            samples += [
                (os.path.join(where, name), folder_to_index[folder]) for name in sorted(names) if name.lower().endswith(IMG_EXTENSIONS)
            ]
    return samples


def _compiled_identity_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DataError(f"identity_pattern {pattern!r} is not a valid regular expression: {err}") from err
    if "identity" not in regex.groupindex:
        raise DataError(f"identity_pattern {pattern!r} has no named group (?P<identity>...)")
    return regex


def _class_of_folder(root: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """({folder name: class name}, classes in label order) for the visible sub-folders of root."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
    as_expression = {folder: _expression_name(folder) for folder in folders}
    if all(name is not None for name in as_expression.values()):
        present = set(as_expression.values())
        return as_expression, tuple(c for c in EXPRESSIONS if c in present)
    return {folder: folder for folder in folders}, tuple(folders)


def _expression_name(folder: str) -> str | None:
    key = folder.lower()
    if key in EXPRESSIONS:
        return key
    return EXPRESSION_ALIASES.get(key)


def _require_images_in_every_folder(root: Path, folder_to_class: dict[str, str], samples) -> None:
    used = {Path(path).relative_to(root).parts[0] for path, _ in samples}
    empty = [folder for folder in folder_to_class if folder not in used]
    if empty:
        raise DataError(f"class folder(s) {[str(root / f) for f in empty]} hold no images (extensions: {', '.join(IMG_EXTENSIONS)})")


def _identity(regex: re.Pattern, path: Path) -> str | None:
    match = regex.search(path.name)
    return None if match is None or not match["identity"] else match["identity"]


def _require_identities(root: Path, pattern: str | None, images: tuple[FaceImage, ...]) -> None:
    unmatched = [str(im.path.relative_to(root)) for im in images if im.identity is None]
    if unmatched:
        listed = ", ".join(unmatched[:LISTED_FILES])
        more = f" and {len(unmatched) - LISTED_FILES} more" if len(unmatched) > LISTED_FILES else ""
        raise DataError(f"identity_pattern {pattern!r} finds no identity in {len(unmatched)} file name(s) under {root}: {listed}{more}")
