"""RADIATE reader: tiny real JPEGs plus a metadata CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from fer_ray.core.config import DataConfig, RadiateConfig
from fer_ray.core.data import EXPRESSIONS, DataError
from fer_ray.core.data.datasets import read_dataset
from fer_ray.core.data.radiate import read_radiate

# (file, model_id, gender, race, expression) -- labels in RADIATE's own words and mixed case
ROWS = [
    ("images/BF-01_fear.jpg", "BF-01", "female", "Black", "Fear"),
    ("images/BF-01_anger.jpg", "BF-01", "female", "Black", "anger"),
    ("images/BF-01_calm.jpg", "BF-01", "female", "Black", "calm"),
    ("images/AM-02_disgust.jpg", "AM-02", "male", "Asian", "DISGUST"),
    ("images/AM-02_happy.jpg", "AM-02", "male", "Asian", "happy"),
    ("images/AM-02_calm.jpg", "AM-02", "male", "Asian", "Calm"),
    ("images/HF-03_neutral.jpg", "HF-03", "female", "Hispanic", "neutral"),
    ("images/HF-03_sad.jpg", "HF-03", "female", "Hispanic", "sadness"),
    ("images/HF-03_surprise.jpg", "HF-03", "female", "Hispanic", " Surprise "),
    ("images/HF-03_open.jpg", "HF-03", "female", "Hispanic", "happy_open"),
]
COLUMNS = ["file", "model_id", "gender", "race", "expression"]


def _write_csv(path: Path, columns, rows, encoding: str = "utf-8") -> None:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


@pytest.fixture()
def radiate_root(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    for k, row in enumerate(ROWS):
        Image.new("RGB", (8, 10), (20 * k, 100, 200 - 10 * k)).save(tmp_path / row[0], "JPEG")
    _write_csv(tmp_path / "metadata.csv", COLUMNS, ROWS)
    return tmp_path


def test_reads_mapped_rows_and_counts_dropped_labels(radiate_root):
    dataset = read_radiate(radiate_root, RadiateConfig())

    assert dataset.name == "radiate"
    assert dataset.classes == EXPRESSIONS
    assert [im.path.name for im in dataset.images] == [Path(r[0]).name for r in ROWS if "calm" not in r[0] and "open" not in r[0]]
    assert [im.expression for im in dataset.images] == ["afraid", "angry", "disgusted", "happy", "neutral", "sad", "surprised"]
    assert dataset.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert dataset.notes["dropped_labels"] == {"calm": 2, "happy_open": 1}
    assert dataset.identities.tolist() == ["BF-01", "BF-01", "AM-02", "AM-02", "HF-03", "HF-03", "HF-03"]
    assert dataset.attribute("race").tolist()[:3] == ["Black", "Black", "Asian"]
    assert dataset.attribute("gender").tolist()[2:5] == ["male", "male", "female"]
    assert all(im.path.is_file() for im in dataset.images)
    with Image.open(dataset.images[0].path) as image:
        assert image.size == (8, 10)


def test_custom_label_map_and_absolute_metadata_path(radiate_root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("meta") / "radiate.csv"
    (radiate_root / "metadata.csv").rename(elsewhere)
    label_map = {"HAPPY": "happy", "happy_open": "happy", "calm": "neutral"}
    cfg = RadiateConfig(metadata=str(elsewhere), label_map=label_map)

    dataset = read_radiate(radiate_root, cfg)

    assert dataset.classes == ("happy", "neutral")
    assert [im.expression for im in dataset.images] == ["neutral", "happy", "neutral", "happy"]
    assert dataset.labels.tolist() == [1, 0, 1, 0]
    assert dataset.notes["dropped_labels"] == {"fear": 1, "anger": 1, "disgust": 1, "neutral": 1, "sadness": 1, "surprise": 1}


def test_byte_order_mark_and_header_case_are_tolerated(radiate_root):
    _write_csv(radiate_root / "metadata.csv", ["File", "Model_ID", "Gender", "Race", "Expression"], ROWS, encoding="utf-8-sig")
    assert len(read_radiate(radiate_root, RadiateConfig())) == 7


def test_read_dataset_dispatches_radiate(radiate_root):
    dataset = read_dataset(DataConfig(dataset="radiate", root=radiate_root))
    assert len(dataset) == 7 and dataset.name == "radiate"


def test_missing_csv_is_named(radiate_root):
    with pytest.raises(DataError, match="other.csv"):
        read_radiate(radiate_root, RadiateConfig(metadata="other.csv"))


def test_missing_column_is_named_with_the_columns_found(radiate_root):
    _write_csv(radiate_root / "metadata.csv", ["file", "model_id", "gender", "ethnicity", "expression"], ROWS)
    with pytest.raises(DataError) as error:
        read_radiate(radiate_root, RadiateConfig())
    message = str(error.value)
    assert "['race']" in message and "ethnicity" in message and "metadata.csv" in message


def test_listed_file_missing_on_disk_is_named(radiate_root):
    (radiate_root / "images" / "HF-03_sad.jpg").unlink()
    with pytest.raises(DataError, match="HF-03_sad.jpg"):
        read_radiate(radiate_root, RadiateConfig())


def test_label_map_target_must_be_a_class(radiate_root):
    with pytest.raises(DataError, match="'joyful'"):
        read_radiate(radiate_root, RadiateConfig(label_map={"happy": "joyful"}))


def test_class_without_images_is_named(radiate_root):
    cfg = RadiateConfig(label_map={"happy": "happy", "contempt": "disgusted"})
    with pytest.raises(DataError, match="disgusted"):
        read_radiate(radiate_root, cfg)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match="no_such_dir"):
        read_radiate(tmp_path / "no_such_dir", RadiateConfig())
