"""Reader for the Karolinska Directed Emotional Faces (KDEF) file layout.

Official naming, e.g. ``AF01HAS.JPG`` / ``BM35SUFL.JPG``::

    session   A | B                       (each person was photographed twice)
    gender    F | M
    id        01..35
    expression AF afraid, AN angry, DI disgusted, HA happy, NE neutral, SA sad, SU surprised
    angle     FL full left, HL half left, S straight, HR half right, FR full right
    extension .JPG / .jpg / .jpeg (any case)

"S" is one letter, so straight-on names are one character shorter than the others. The real archive
keeps one subfolder per session+person (``KDEF/AF01/AF01AFFL.JPG``); the reader searches recursively.
Identity is gender+id ("F01"): AF01 and BF01 are the same person.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from fer_ray.core.data.records import EXPRESSIONS, DataError, FaceDataset, FaceImage

#: KDEF expression code -> class name in :data:`EXPRESSIONS`.
EXPRESSION_CODES: dict[str, str] = {
    "AF": "afraid",
    "AN": "angry",
    "DI": "disgusted",
    "HA": "happy",
    "NE": "neutral",
    "SA": "sad",
    "SU": "surprised",
}
CODE_OF_EXPRESSION: dict[str, str] = {name: code for code, name in EXPRESSION_CODES.items()}
#: Camera angles, left profile to right profile.
ANGLES: tuple[str, ...] = ("FL", "HL", "S", "HR", "FR")
SESSIONS: tuple[str, ...] = ("A", "B")
GENDERS: tuple[str, ...] = ("F", "M")
#: The official archive has 35 people per gender; the synthetic generator may make more.
KDEF_PEOPLE_PER_GENDER = 35
#: How many offending names a warning or error spells out before it only counts the rest.
LISTED_NAMES = 20

_NAME = re.compile(
    r"^(?P<session>[AB])(?P<gender>[FM])(?P<person_id>\d{2})"
    r"(?P<expression>AF|AN|DI|HA|NE|SA|SU)(?P<angle>FL|HL|HR|FR|S)\.(?:JPG|JPEG)$",
    re.IGNORECASE,
)


class KdefNameWarning(UserWarning):
    """Files under a KDEF root whose names do not follow the official naming (they are skipped)."""


@dataclass(frozen=True)
class KdefName:
    """The fields of one KDEF file name. Letters are upper case; expression is a class name."""

    session: str  # "A" | "B"
    gender: str  # "F" | "M"
    person_id: int  # 1..35 (more for large synthetic sets)
    expression: str  # one of EXPRESSIONS, e.g. "happy"
    angle: str  # one of ANGLES

    @property
    def identity(self) -> str:
        """The person, independent of session: gender + two-digit id, e.g. "F01"."""
        return f"{self.gender}{self.person_id:02d}"

    def filename(self, suffix: str = ".JPG") -> str:
        """The official file name, e.g. ``AF01HAS.JPG``."""
        code = CODE_OF_EXPRESSION[self.expression]
        return f"{self.session}{self.gender}{self.person_id:02d}{code}{self.angle}{suffix}"


def parse_kdef_name(filename: str, max_person_id: int = KDEF_PEOPLE_PER_GENDER) -> KdefName | None:
    """The fields of a KDEF file name (case-insensitive), or None when it is not one.

    ``filename`` is a bare name or a path (only the last component is read). Ids outside
    1..max_person_id are not KDEF names.
    """
    match = _NAME.match(Path(filename).name)
    if match is None:
        return None
    person_id = int(match["person_id"])
    if not 1 <= person_id <= max_person_id:
        return None
    return KdefName(
        session=match["session"].upper(),
        gender=match["gender"].upper(),
        person_id=person_id,
        expression=EXPRESSION_CODES[match["expression"].upper()],
        angle=match["angle"].upper(),
    )


def read_kdef(
    root: Path,
    angles=None,
    sessions=None,
    max_person_id: int = KDEF_PEOPLE_PER_GENDER,
) -> FaceDataset:
    """Every KDEF-named image under ``root`` (searched recursively), optionally filtered.

    angles / sessions: values to keep (e.g. ["S"], ["A"]); None keeps all.
    max_person_id: highest valid id (35 in the real KDEF; the synthetic set may use up to 99).
    Files with other names are skipped and listed in one :class:`KdefNameWarning`.
    Returns a FaceDataset named "kdef" in sorted path order, classes = EXPRESSIONS, with gender
    ("F"/"M"), angle and session set on every image.
    Raises DataError for a missing folder, a folder without KDEF images, an unknown filter value, or
    a class left without images after filtering.
    """
    root = Path(root).expanduser().resolve()
    keep_angles = _checked_filter("angle", angles, ANGLES)
    keep_sessions = _checked_filter("session", sessions, SESSIONS)
    if not root.is_dir():
        raise DataError(f"KDEF folder {root} does not exist (or is not a folder)")

    parsed, unmatched = _scan(root, max_person_id)
    if unmatched:
        _warn_unmatched(root, unmatched)
    if not parsed:
        raise DataError(f"KDEF folder {root} holds no KDEF-named images (e.g. AF01HAS.JPG)")

    images = tuple(
        FaceImage(
            path=path,
            expression=name.expression,
            identity=name.identity,
            gender=name.gender,
            angle=name.angle,
            session=name.session,
        )
        for path, name in parsed
        if name.angle in keep_angles and name.session in keep_sessions
    )
    _require_every_class(root, images, keep_angles, keep_sessions)
    return FaceDataset(name="kdef", images=images, classes=EXPRESSIONS)


def _checked_filter(what: str, values, valid: tuple[str, ...]) -> frozenset[str]:
    """The set of values to keep; every value must be one of ``valid``."""
    if values is None:
        return frozenset(valid)
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise DataError(f"unknown KDEF {what}(s) {unknown}; choose from {list(valid)}")
    if not values:
        raise DataError(f"the KDEF {what} filter is empty; give at least one of {list(valid)} or None")
    return frozenset(values)


def _scan(root: Path, max_person_id: int) -> tuple[list[tuple[Path, KdefName]], list[Path]]:
    """(path, parsed name) for every KDEF-named file under root, and the other files, sorted."""
    parsed: list[tuple[Path, KdefName]] = []
    unmatched: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = parse_kdef_name(path.name, max_person_id)
        if name is None:
            unmatched.append(path)
        else:
            parsed.append((path, name))
    return parsed, unmatched


def _warn_unmatched(root: Path, unmatched: list[Path]) -> None:
    listed = ", ".join(str(p.relative_to(root)) for p in unmatched[:LISTED_NAMES])
    more = f" and {len(unmatched) - LISTED_NAMES} more" if len(unmatched) > LISTED_NAMES else ""
    warnings.warn(
        f"{len(unmatched)} file(s) under {root} do not follow the KDEF naming (e.g. AF01HAS.JPG) and were skipped: {listed}{more}",
        KdefNameWarning,
        stacklevel=3,
    )


def _require_every_class(root: Path, images, angles: frozenset[str], sessions: frozenset[str]) -> None:
    present = {im.expression for im in images}
    missing = [c for c in EXPRESSIONS if c not in present]
    if missing:
        raise DataError(
            f"KDEF folder {root} has no images of class(es) {missing} for angles {sorted(angles)} and sessions {sorted(sessions)}"
        )
