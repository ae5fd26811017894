"""Reader for RADIATE (Racially Diverse Affective Expression) style datasets.

Layout: image files anywhere under ``root`` plus one metadata CSV (``RadiateConfig.metadata``,
relative to root unless absolute) with one row per image and the columns

    file        image path relative to root (or absolute)
    model_id    the person photographed (used as identity)
    gender      free text, kept as-is (stripped)
    race        race/ethnicity, free text, kept as-is (stripped)
    expression  RADIATE's label, mapped to the KDEF classes by ``RadiateConfig.label_map``

Column names and labels are matched case-insensitively. Rows whose label is not in the map
(RADIATE has e.g. "calm") are dropped and counted in ``FaceDataset.notes["dropped_labels"]``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from fer_ray.core.config import RadiateConfig
from fer_ray.core.data.records import EXPRESSIONS, DataError, FaceDataset, FaceImage

REQUIRED_COLUMNS: tuple[str, ...] = ("file", "model_id", "gender", "race", "expression")
#: How many missing files an error spells out before it only counts the rest.
LISTED_FILES = 20


def read_radiate(root: Path, cfg: RadiateConfig) -> FaceDataset:
    """The images listed in the metadata CSV whose expression maps to a KDEF class.

    Returns a FaceDataset named "radiate", rows in CSV order, identity = model_id; classes are the
    map's target classes in EXPRESSIONS order (all 7 with the default map).
    notes: {"metadata": CSV path, "dropped_labels": {lower-case label: rows dropped}}.
    Raises DataError for: a missing folder or CSV, a missing column (naming those found), a map
    target that is not a class, an empty file cell, listed files missing on disk, or a class with
    no images.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"RADIATE folder {root} does not exist (or is not a folder)")
    csv_path = _metadata_path(root, cfg.metadata)
    label_map = _checked_label_map(cfg.label_map)
    classes = tuple(c for c in EXPRESSIONS if c in label_map.values())

    rows = _read_rows(csv_path)
    images: list[FaceImage] = []
    dropped: Counter[str] = Counter()
    for line_number, row in rows:
        label = row["expression"].strip().lower()
        if label not in label_map:
            dropped[label] += 1
            continue
        images.append(_face_image(root, csv_path, line_number, row, label_map[label]))

    _require_files_on_disk(csv_path, images)
    _require_every_class(csv_path, images, classes)
    return FaceDataset(
        name="radiate",
        images=tuple(images),
        classes=classes,
        notes={"metadata": str(csv_path), "dropped_labels": dict(sorted(dropped.items()))},
    )


def _metadata_path(root: Path, metadata: str) -> Path:
    path = Path(metadata).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"RADIATE metadata CSV {path} does not exist (set data.radiate.metadata)")
    return path


def _checked_label_map(label_map: dict[str, str]) -> dict[str, str]:
    """The map with lower-case keys; every target must be a KDEF class."""
    bad = {label: target for label, target in label_map.items() if target not in EXPRESSIONS}
    if bad:
        raise DataError(f"data.radiate.label_map maps to unknown class(es) {bad}; targets must be in {list(EXPRESSIONS)}")
    if not label_map:
        raise DataError("data.radiate.label_map is empty: no RADIATE label would be kept")
    return {label.strip().lower(): target for label, target in label_map.items()}


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row keyed by lower-case column name) for every data row of the CSV."""
    # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise stick to "file".
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        found = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in {f.lower() for f in found}]
        if missing:
            raise DataError(f"RADIATE metadata CSV {csv_path} lacks column(s) {missing}; columns found: {found}")
        rows = [(reader.line_num, {(k or "").strip().lower(): (v or "") for k, v in row.items()}) for row in reader]
    if not rows:
        raise DataError(f"RADIATE metadata CSV {csv_path} has no data rows")
    return rows


def _face_image(root: Path, csv_path: Path, line_number: int, row: dict[str, str], expression: str) -> FaceImage:
    relative = row["file"].strip()
    if not relative:
        raise DataError(f"RADIATE metadata CSV {csv_path} line {line_number}: empty 'file' cell")
    return FaceImage(
        path=root / relative,  # an absolute `relative` replaces root (pathlib join semantics)
        expression=expression,
        identity=row["model_id"].strip() or None,
        gender=row["gender"].strip() or None,
        race=row["race"].strip() or None,
    )


def _require_files_on_disk(csv_path: Path, images: list[FaceImage]) -> None:
    missing = [str(im.path) for im in images if not im.path.is_file()]
    if missing:
        listed = ", ".join(missing[:LISTED_FILES])
        more = f" and {len(missing) - LISTED_FILES} more" if len(missing) > LISTED_FILES else ""
        raise DataError(f"{len(missing)} image file(s) listed in {csv_path} are missing on disk: {listed}{more}")


def _require_every_class(csv_path: Path, images: list[FaceImage], classes: tuple[str, ...]) -> None:
    present = {im.expression for im in images}
    empty = [c for c in classes if c not in present]
    if empty:
        raise DataError(
            f"RADIATE metadata CSV {csv_path} has no images of class(es) {empty} after mapping labels with data.radiate.label_map"
        )
