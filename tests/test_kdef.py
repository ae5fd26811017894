"""KDEF reader: the full official name set as empty files, junk names, filters, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from fer_ray.core.config import DataConfig
from fer_ray.core.data import EXPRESSIONS, DataError
from fer_ray.core.data.datasets import read_dataset
from fer_ray.core.data.kdef import KdefName, KdefNameWarning, parse_kdef_name, read_kdef

CODES = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")
ANGLES = ("FL", "HL", "S", "HR", "FR")
JUNK = ("AF01HAX.JPG", "readme.txt", "AF36HAS.JPG", "CF01HAS.JPG", "AF01HASS.JPG", "AF00HAS.JPG", "AF01HAS.png")


@pytest.fixture(scope="module")
def kdef_root(tmp_path_factory) -> Path:
    """The official 4,900 names as empty files, one folder per session+person, plus junk and one
    valid lower-case name (``af01has.jpeg``)."""
    root = tmp_path_factory.mktemp("KDEF")
    for session in "AB":
        for gender in "FM":
            for person in range(1, 36):
                folder = root / f"{session}{gender}{person:02d}"
                folder.mkdir()
                for code in CODES:
                    for angle in ANGLES:
                        (folder / f"{session}{gender}{person:02d}{code}{angle}.JPG").touch()
    for name in JUNK:
        (root / "AF01" / name).touch()
    (root / "AF01" / "af01has.jpeg").touch()
    return root


def _read_quietly(root: Path, **filters):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KdefNameWarning)
        return read_kdef(root, **filters)


def test_full_official_set_is_found_exactly(kdef_root):
    with pytest.warns(KdefNameWarning) as caught:
        dataset = read_kdef(kdef_root)

    assert len(dataset) == 4900 + 1  # + af01has.jpeg
    assert dataset.name == "kdef"
    assert dataset.classes == EXPRESSIONS
    assert len(set(dataset.identities)) == 70
    assert set(dataset.identities) == {f"{g}{i:02d}" for g in "FM" for i in range(1, 36)}
    assert set(dataset.attribute("angle")) == set(ANGLES)
    assert set(dataset.attribute("session")) == {"A", "B"}
    assert set(dataset.attribute("gender")) == {"F", "M"}
    assert sorted(set(dataset.labels.tolist())) == list(range(7))
    # the two sessions of a person share one identity
    f01 = [im for im in dataset.images if im.identity == "F01"]
    assert {im.session for im in f01} == {"A", "B"} and len(f01) == 70 + 1

    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"{len(JUNK)} file(s)" in message
    for name in JUNK:
        assert name in message
    assert "af01has.jpeg" not in message


def test_images_carry_their_fields(kdef_root):
    dataset = _read_quietly(kdef_root)
    by_name = {im.path.name: im for im in dataset.images}
    image = by_name["BM35SUFR.JPG"]
    assert (image.session, image.gender, image.identity, image.expression, image.angle) == ("B", "M", "M35", "surprised", "FR")
    assert image.path == kdef_root.resolve() / "BM35" / "BM35SUFR.JPG"
    lower = by_name["af01has.jpeg"]
    assert (lower.identity, lower.expression, lower.angle, lower.session) == ("F01", "happy", "S", "A")


def test_filters_by_angle_and_session(kdef_root):
    straight = _read_quietly(kdef_root, angles=["S"])
    assert len(straight) == 2 * 2 * 35 * 7 + 1
    assert set(straight.attribute("angle")) == {"S"}

    session_b = _read_quietly(kdef_root, sessions=["B"])
    assert len(session_b) == 2 * 35 * 7 * 5
    assert set(session_b.attribute("session")) == {"B"}

    profiles_a = _read_quietly(kdef_root, angles=["FL", "FR"], sessions=["A"])
    assert len(profiles_a) == 2 * 35 * 7 * 2
    assert set(profiles_a.attribute("angle")) == {"FL", "FR"}


def test_read_dataset_dispatches_kdef(kdef_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KdefNameWarning)
        dataset = read_dataset(DataConfig(dataset="kdef", root=kdef_root, angles=["HL"], sessions=["A"]))
    assert len(dataset) == 2 * 35 * 7
    assert set(dataset.attribute("angle")) == {"HL"}


@pytest.mark.parametrize(
    "name, fields",
    [
        ("AF01HAS.JPG", ("A", "F", 1, "happy", "S")),
        ("AF01AFFL.JPG", ("A", "F", 1, "afraid", "FL")),
        ("BM35SUFR.jpg", ("B", "M", 35, "surprised", "FR")),
        ("am17anhl.jpeg", ("A", "M", 17, "angry", "HL")),
        ("BF09DIHR.JPEG", ("B", "F", 9, "disgusted", "HR")),
        ("AM20NES.JPG", ("A", "M", 20, "neutral", "S")),
        ("KDEF/BF02/BF02SAS.JPG", ("B", "F", 2, "sad", "S")),
    ],
)
def test_parse_kdef_name(name, fields):
    parsed = parse_kdef_name(name)
    assert parsed == KdefName(*fields)
    assert parsed.filename(".JPG").upper() == Path(name).name.upper().replace(".JPEG", ".JPG")


@pytest.mark.parametrize(
    "name",
    [
        "AF01HAX.JPG",
        "AF36HAS.JPG",
        "AF00HAS.JPG",
        "CF01HAS.JPG",
        "AX01HAS.JPG",
        "AF01HASS.JPG",
        "AF01XXS.JPG",
        "AF1HAS.JPG",
        "AF01HAS.png",
        "AF01HAS",
        "readme.txt",
    ],
)
def test_parse_rejects_non_kdef_names(name):
    assert parse_kdef_name(name) is None


def test_person_limit_is_configurable():
    assert parse_kdef_name("AF36HAS.JPG") is None
    assert parse_kdef_name("AF36HAS.JPG", max_person_id=40).identity == "F36"


def test_long_junk_list_is_truncated_in_one_warning(tmp_path):
    for expression in CODES:
        (tmp_path / f"AF01{expression}S.JPG").touch()
    for k in range(25):
        (tmp_path / f"junk{k:02d}.txt").touch()
    with pytest.warns(KdefNameWarning) as caught:
        read_kdef(tmp_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "25 file(s)" in message and "and 5 more" in message
    assert "junk00.txt" in message and "junk24.txt" not in message


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        read_kdef(tmp_path / "nowhere")


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path.name}.*no KDEF-named images"):
        read_kdef(tmp_path)


def test_folder_with_only_junk_is_an_error(tmp_path):
    (tmp_path / "readme.txt").touch()
    with pytest.warns(KdefNameWarning), pytest.raises(DataError, match="no KDEF-named images"):
        read_kdef(tmp_path)


def test_class_emptied_by_the_filter_is_named(tmp_path):
    for expression in CODES:
        (tmp_path / f"AF01{expression}FL.JPG").touch()
    for expression in CODES[:-1]:  # no straight-on "surprised"
        (tmp_path / f"AF01{expression}S.JPG").touch()
    assert len(read_kdef(tmp_path, angles=["FL"])) == 7
    with pytest.raises(DataError, match=r"surprised.*angles \['S'\]") as error:
        read_kdef(tmp_path, angles=["S"])
    assert str(tmp_path.resolve()) in str(error.value)


def test_unknown_filter_value_is_named(tmp_path):
    with pytest.raises(DataError, match="'XL'"):
        read_kdef(tmp_path, angles=["XL"])
    with pytest.raises(DataError, match="'C'"):
        read_kdef(tmp_path, sessions=["C"])
