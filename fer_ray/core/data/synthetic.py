"""Synthetic KDEF-format faces: the embedded default dataset (no download, no real people).

Cartoon faces drawn with PIL.ImageDraw, saved under the real KDEF layout and names
(``<root>/AF01/AF01HAS.JPG``), so the KDEF reader, splits and every experiment run on them unchanged.

What varies, and with what:
  expression  mouth shape/openness (smile, frown, O, stretched, raised upper lip), teeth, brow height
              and slant, eye openness (narrowed / wide with white showing), nose wrinkles, smile
              folds, forehead lines -- the signal a classifier should learn;
  identity    head shape, skin tone, hair colour/volume/hairline, eye spacing and size, nose, mouth;
  gender      F: long hair, narrower pointed jaw, fuller lips, thin brows; M: short hair, square jaw;
  angle       FL/HL/S/HR/FR turn the head (features slide round an ellipsoid and squash, the nose
              sticks out in profile);
  lighting    brightness per photo; colour cast and a side light per session (session B is a second
              "photo shoot" of the same person), the side light's strength jittered per photo;
  per image   position, scale, roll, expression intensity and pixel noise.

Version 2 frames the face closer (it fills most of a 32-48 px square) and draws the expressive parts
bolder (thicker, darker brows and lips, larger brow and mouth movements, expression intensity
0.77-1.27 of the prototype instead of 0.61-1.23), so ResNets learn the expressions across people in a
few CPU epochs; identity, gender, angle and lighting vary as before (lighting a little more).

``SyntheticConfig.feature_scale`` (default 1.0: the images above, byte for byte, under the same cache
key) draws the eyes, brows and mouth larger relative to the head -- their shapes, movements and stroke
widths -- so an expression covers more pixels at 32 px; everything that varies still varies.

Everything is seeded from (cfg.seed, person, session, expression, angle), so the same config gives
byte-identical files, and a person looks the same whatever the number of people generated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fer_ray.core.config import SyntheticConfig
from fer_ray.core.data.kdef import ANGLES, GENDERS, SESSIONS, KdefName
from fer_ray.core.data.records import EXPRESSIONS
from fer_ray.core.files import default_cache_dir

#: Bump when the drawing changes, so cached synthetic folders are regenerated.
GENERATOR_VERSION = 2
#: Head yaw in degrees per KDEF angle (negative: the face turns towards the image's left).
YAW_DEG: dict[str, float] = {"FL": -90.0, "HL": -45.0, "S": 0.0, "HR": 45.0, "FR": 90.0}
JPEG_QUALITY = 92
_SUPERSAMPLE = 2  # draw at 2x and box-downsample: ImageDraw itself does not anti-alias

RGB = tuple[float, float, float]
_SKIN_TONES: tuple[RGB, ...] = (
    (250, 222, 198),
    (238, 196, 168),
    (224, 174, 140),
    (200, 140, 105),
    (165, 108, 78),
    (120, 78, 54),
    (90, 60, 44),
)
_HAIR_COLOURS: tuple[RGB, ...] = (
    (22, 18, 16),
    (55, 38, 28),
    (92, 62, 40),
    (150, 110, 66),
    (205, 172, 110),
    (125, 55, 32),
    (150, 148, 145),
)
_IRIS_COLOURS: tuple[RGB, ...] = ((70, 45, 30), (40, 28, 22), (70, 110, 150), (80, 110, 70), (110, 85, 50))


@dataclass(frozen=True)
class ExpressionShape:
    """Face-part settings of one expression, in units relative to the head (0 = neutral)."""

    brow_raise: float  # + lowers the brows, - raises them (units of 0.13 head half-heights)
    brow_tilt: float  # + inner ends up (sad, afraid), - inner ends down (angry)
    eye_open: float  # eye height relative to neutral
    mouth_curve: float  # + corners up (smile), - corners down
    mouth_open: float  # 0 closed .. 1 wide open
    mouth_width: float  # relative to neutral
    upper_lift: float  # share of the opening above the lip line (0.85: raised upper lip)
    asymmetry: float  # one mouth corner higher than the other (disgust)
    teeth: float  # > 0.5 shows the upper teeth
    folds: float  # smile / sneer folds from nose to mouth corners
    nose_wrinkle: float
    forehead_lines: float
    lip_press: float  # 1 = thin pressed lips


_NEUTRAL = ExpressionShape(0, 0, 1.0, 0, 0, 1.0, 0.5, 0, 0, 0, 0, 0, 0)
EXPRESSION_SHAPES: dict[str, ExpressionShape] = {
    "afraid": ExpressionShape(-0.6, 0.8, 1.4, -0.35, 0.5, 1.2, 0.45, 0, 0.6, 0, 0, 0.6, 0),
    "angry": ExpressionShape(0.9, -1.1, 0.72, -0.25, 0.0, 0.8, 0.5, 0, 0, 0, 0.4, 0, 1.0),
    "disgusted": ExpressionShape(0.5, -0.5, 0.6, -0.45, 0.3, 1.0, 0.85, 0.5, 0.7, 0.8, 1.0, 0, 0),
    "happy": ExpressionShape(-0.1, 0.0, 0.7, 1.0, 0.45, 1.3, 0.25, 0, 1.0, 1.0, 0, 0, 0),
    "neutral": _NEUTRAL,
    "sad": ExpressionShape(0.2, 0.9, 0.8, -0.8, 0.0, 0.9, 0.5, 0, 0, 0, 0, 0.3, 0.3),
    "surprised": ExpressionShape(-1.1, 0.0, 1.5, 0.0, 1.0, 0.6, 0.45, 0, 0, 0, 0, 1.0, 0),
}
assert set(EXPRESSION_SHAPES) == set(EXPRESSIONS)


def synthetic_names(cfg: SyntheticConfig) -> list[KdefName]:
    """Every KDEF name the config generates: sessions x genders x ids x expressions x angles."""
    sessions = [s for s in SESSIONS if s in cfg.sessions]
    angles = [a for a in ANGLES if a in cfg.angles]
    return [
        KdefName(session, gender, person_id, expression, angle)
        for session in sessions
        for gender in GENDERS
        for person_id in range(1, cfg.identities + 1)
        for expression in EXPRESSIONS
        for angle in angles
    ]


def generate_synthetic_kdef(root: Path, cfg: SyntheticConfig) -> Path:
    """Write every image of ``cfg`` as ``<root>/<session><gender><id>/<KDEF name>.JPG``; return root.

    JPEGs are RGB, cfg.width x cfg.height px. Existing files with the same names are overwritten.
    """
    root = Path(root)
    for name in synthetic_names(cfg):
        folder = root / f"{name.session}{name.gender}{name.person_id:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        render_synthetic_face(name, cfg).save(folder / name.filename(".JPG"), "JPEG", quality=JPEG_QUALITY)
    return root


def synthetic_root(cfg: SyntheticConfig, cache_dir: Path | None = None) -> Path:
    """The generated folder for ``cfg`` under <cache_dir or default_cache_dir()>/synthetic/<hash>/.

    Made on first use in a temporary sibling folder and moved into place with os.replace, so an
    interrupted run never leaves a half-written dataset; later calls (and other processes) reuse it.
    """
    parent = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    parent = parent / "synthetic"
    final = parent / config_hash(cfg)
    if final.is_dir():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    try:
        generate_synthetic_kdef(staging, cfg)
        os.replace(staging, final)
    except OSError:
        if not final.is_dir():  # a real failure, not another process finishing first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def config_hash(cfg: SyntheticConfig) -> str:
    """16 hex chars identifying the generated files (order/duplicates of lists do not matter)."""
    canonical = {
        "version": GENERATOR_VERSION,
        "identities": cfg.identities,
        "sessions": [s for s in SESSIONS if s in cfg.sessions],
        "angles": [a for a in ANGLES if a in cfg.angles],
        "width": cfg.width,
        "height": cfg.height,
        "seed": cfg.seed,
    }
    if cfg.feature_scale != 1.0:  # only when set, so the default's folders keep their names
        canonical["feature_scale"] = cfg.feature_scale
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def render_synthetic_face(name: KdefName, cfg: SyntheticConfig) -> Image.Image:
    """The RGB image (cfg.width x cfg.height, uint8) that ``name`` gets in the synthetic set."""
    gender_index = GENDERS.index(name.gender)
    person = _draw_person(np.random.default_rng([cfg.seed, 0, gender_index, name.person_id]), name.gender)
    shoot = np.random.default_rng([cfg.seed, 1, gender_index, name.person_id, SESSIONS.index(name.session)])
    image_rng = np.random.default_rng(
        [
            cfg.seed,
            2,
            gender_index,
            name.person_id,
            SESSIONS.index(name.session),
            EXPRESSIONS.index(name.expression),
            ANGLES.index(name.angle),
        ]
    )
    # A session is a second photo shoot: its own colour cast and side light; brightness and the side
    # light's strength vary from photo to photo.
    light = _Lighting(
        gain=float(image_rng.uniform(0.94, 1.06)),
        tint=tuple(shoot.normal(0, 1.0, 3)),
        side=float(shoot.uniform(-0.07, 0.07) + image_rng.normal(0, 0.01)),
    )
    shape = _performed(EXPRESSION_SHAPES[name.expression], person.expressiveness, image_rng)
    pose = _Pose(
        yaw=math.radians(YAW_DEG[name.angle]),
        dx=float(image_rng.normal(0, 0.008)),
        dy=float(image_rng.normal(0, 0.006)),
        scale=float(image_rng.uniform(0.98, 1.02)),
        roll_deg=float(image_rng.normal(0, 1.0)),
    )
    canvas = _draw(person, shape, pose, light, cfg.width * _SUPERSAMPLE, cfg.height * _SUPERSAMPLE, cfg.feature_scale)
    # Roll after downsampling: rotating the 4x larger canvas would cost most of the render time.
    rolled = canvas.reduce(_SUPERSAMPLE).rotate(pose.roll_deg, resample=Image.Resampling.BILINEAR, fillcolor=_background(light))
    pixels = np.asarray(rolled, dtype=np.float32)  # (height, width, 3), 0..255
    pixels = pixels * _side_light(light.side, cfg.width)
    noisy = pixels + image_rng.normal(0, image_rng.uniform(2.0, 5.0), pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


# --- who, how lit, how posed -----------------------------------------------------------------


@dataclass(frozen=True)
class _Person:
    gender: str
    skin: RGB
    hair: RGB
    iris: RGB
    shirt: RGB
    head_width: float
    head_height: float
    jaw_exponent: float  # superellipse exponent of the lower face: 2 round/pointed, 3+ square
    eye_u: float  # eye centre, fraction of the half-width from the midline
    eye_level: float
    eye_size: float
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    nose_length: float
    mouth_width: float
    lip_thickness: float
    hairline: float
    hair_volume: float
    hair_length: float  # long hair below the chin, in head heights (0: short)
    fringe: float  # side-swept fringe: -1..1 side and size, 0 none
    expressiveness: float


@dataclass(frozen=True)
class _Pose:
    yaw: float  # radians
    dx: float  # fraction of the width
    dy: float  # fraction of the height
    scale: float
    roll_deg: float


@dataclass(frozen=True)
class _Lighting:
    gain: float  # overall brightness factor
    tint: tuple[float, float, float]  # colour cast, added per channel (0..255 levels)
    side: float  # light from one side: brightness factor 1 - side at the left edge, 1 + side at the right


def _draw_person(rng: np.random.Generator, gender: str) -> _Person:
    female = gender == "F"
    skin = np.array(_SKIN_TONES[rng.integers(len(_SKIN_TONES))]) + rng.normal(0, 6, 3)
    hair = np.array(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]) + rng.normal(0, 5, 3)
    shirt = np.full(3, rng.uniform(95, 150)) + rng.normal(0, 8, 3)
    return _Person(
        gender=gender,
        skin=_rgb(skin),
        hair=_rgb(hair),
        iris=_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))],
        shirt=_rgb(shirt),
        head_width=float(rng.uniform(0.88, 1.0) if female else rng.uniform(0.96, 1.1)),
        head_height=float(rng.uniform(0.93, 1.05)),
        jaw_exponent=float(rng.uniform(1.8, 2.2) if female else rng.uniform(2.6, 3.6)),
        eye_u=float(rng.uniform(0.34, 0.46)),
        eye_level=float(rng.uniform(-0.1, 0.0)),
        eye_size=float(rng.uniform(0.88, 1.12)),
        brow_gap=float(rng.uniform(0.15, 0.2)),
        brow_thickness=float(rng.uniform(0.07, 0.09) if female else rng.uniform(0.09, 0.115)),
        brow_arch=float(rng.uniform(0.01, 0.05)),
        nose_length=float(rng.uniform(0.85, 1.15)),
        mouth_width=float(rng.uniform(0.85, 1.12)),
        lip_thickness=float(rng.uniform(0.075, 0.095) if female else rng.uniform(0.06, 0.08)),
        hairline=float(rng.uniform(0.5, 0.66) if female else rng.uniform(0.55, 0.75)),
        hair_volume=float(rng.uniform(0.1, 0.2) if female else rng.uniform(0.03, 0.12)),
        hair_length=float(rng.uniform(0.35, 1.0)) if female else 0.0,
        fringe=float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)) if female and rng.random() < 0.5 else 0.0,
        expressiveness=float(rng.uniform(0.9, 1.1)),
    )


def _performed(shape: ExpressionShape, expressiveness: float, rng: np.random.Generator) -> ExpressionShape:
    """The expression as acted once: scaled towards/away from neutral, each part jittered."""
    intensity = expressiveness * rng.uniform(0.85, 1.15)
    neutral = asdict(_NEUTRAL)
    return ExpressionShape(
        **{
            part: neutral[part] + intensity * (target - neutral[part]) + float(rng.normal(0, 0.06))
            for part, target in asdict(shape).items()
        }
    )


# --- drawing ---------------------------------------------------------------------------------


def _draw(
    person: _Person, shape: ExpressionShape, pose: _Pose, light: _Lighting, width: int, height: int, feature_scale: float = 1.0
) -> Image.Image:
    """The face on a width x height RGB canvas (supersampled; the caller reduces and rolls it).

    feature_scale: size of the eyes, brows and mouth (their shapes, movements and strokes) relative to
    the head; 1.0 draws them as version 2 always did.
    """
    canvas = Image.new("RGB", (width, height), _background(light))
    draw = ImageDraw.Draw(canvas)
    head = _Head(
        cx=width * (0.5 + pose.dx),
        cy=height * (0.47 + pose.dy),
        rx=width * 0.35 * person.head_width * pose.scale,
        ry=height * 0.36 * person.head_height * pose.scale,
        jaw_exponent=person.jaw_exponent,
        jaw_drop=0.12 * max(0.0, shape.mouth_open),
        yaw=pose.yaw,
        features=feature_scale,
    )
    paint = _palette(person, light)
    _draw_body_and_hair_behind(draw, head, person, paint)
    _draw_ears(draw, head, paint, in_front=False)
    draw.polygon(head.outline(), fill=paint.skin)
    _draw_hair_on_back_of_head(draw, head, person, paint)
    _draw_hair_cap(draw, head, person, paint)
    _draw_ears(draw, head, paint, in_front=True)
    _draw_forehead_lines(draw, head, shape, paint)
    for side in (-1, 1):
        _draw_eye(canvas, head, person, shape, paint, side)
        _draw_brow(draw, head, person, shape, paint, side)
    _draw_nose(draw, head, person, shape, paint)
    _draw_mouth(draw, head, person, shape, paint)
    return canvas


@dataclass(frozen=True)
class _Head:
    """Head geometry in canvas px; features sit on an ellipsoid turned by ``yaw``."""

    cx: float
    cy: float
    rx: float
    ry: float
    jaw_exponent: float
    jaw_drop: float  # an open mouth lowers the chin by this fraction of ry
    yaw: float
    features: float = 1.0  # SyntheticConfig.feature_scale: eyes, brows and mouth grow by this factor

    @property
    def mouth_y(self) -> float:
        return self.cy + self.ry * (0.58 + 0.45 * self.jaw_drop)

    def half_width(self, y: float) -> float:
        """Half-width of the face at canvas row y (ellipse above the centre, superellipse below)."""
        below = y >= self.cy
        t = min(abs(y - self.cy) / (self.ry * (1.0 + self.jaw_drop) if below else self.ry), 1.0)
        n = self.jaw_exponent if below else 2.0
        return self.rx * (1.0 - t**n) ** (1.0 / n)

    def place(self, u: float, y: float) -> tuple[float, float]:
        """(x, foreshortening) of a surface point u in [-1, 1] across the face at row y.

        Foreshortening cos(phi + yaw) is 1 facing the camera, <= 0 on the hidden side.
        """
        phi = math.asin(max(-1.0, min(1.0, u))) + self.yaw
        return self.cx + self.half_width(y) * math.sin(phi), math.cos(phi)

    def outline(self, points: int = 48) -> list[tuple[float, float]]:
        # The head silhouette is wider in profile (a head is deeper than it is wide).
        widen = 1.0 + 0.12 * abs(math.sin(self.yaw))
        outline = []
        for k in range(points):
            angle = 2 * math.pi * k / points
            c, s = math.cos(angle), math.sin(angle)
            n = 2.0 if s < 0 else self.jaw_exponent
            x = self.rx * widen * math.copysign(abs(c) ** (2 / n), c)
            ry = self.ry * (1.0 + self.jaw_drop) if s > 0 else self.ry
            y = ry * math.copysign(abs(s) ** (2 / n), s)
            outline.append((self.cx + x, self.cy + y))
        return outline

    def px(self, fraction: float) -> float:
        """A length given as a fraction of the head height, in px."""
        return fraction * self.ry


@dataclass(frozen=True)
class _Palette:
    skin: tuple[int, int, int]
    shadow: tuple[int, int, int]
    hair: tuple[int, int, int]
    brow: tuple[int, int, int]
    lips: tuple[int, int, int]
    iris: tuple[int, int, int]
    shirt: tuple[int, int, int]


def _palette(person: _Person, light: _Lighting) -> _Palette:
    def lit(colour) -> tuple[int, int, int]:
        return _rgb(np.asarray(colour) * light.gain + np.asarray(light.tint))

    skin = np.asarray(person.skin)
    lip_red = np.array([175, 60, 70]) if person.gender == "F" else np.array([150, 75, 70])
    return _Palette(
        skin=lit(skin),
        shadow=lit(skin * 0.72),
        hair=lit(person.hair),
        brow=lit(np.asarray(person.hair) * 0.55 + 12),
        lips=lit(skin * 0.45 + lip_red * 0.4),
        iris=lit(person.iris),
        shirt=lit(person.shirt),
    )


def _side_light(side: float, width: int) -> np.ndarray:
    """Per-column brightness factor, shape (1, width, 1): a linear ramp from 1 - side to 1 + side."""
    return (1.0 + side * np.linspace(-1.0, 1.0, width, dtype=np.float32)).reshape(1, width, 1)


def _background(light: _Lighting) -> tuple[int, int, int]:
    return _rgb(np.array([196, 202, 208]) * light.gain + np.asarray(light.tint))


def _draw_body_and_hair_behind(draw, head: _Head, person: _Person, paint: _Palette) -> None:
    cx, cy, rx, ry = head.cx, head.cy, head.rx, head.ry
    draw.ellipse([cx - 2.1 * rx, cy + 1.3 * ry, cx + 2.1 * rx, cy + 3.6 * ry], fill=paint.shirt)
    back = -math.sin(head.yaw) * rx  # the back of the head shows on the side the face turns from
    if person.hair_length > 0:
        hx = cx + 0.35 * back
        draw.rounded_rectangle(
            [
                hx - 1.2 * rx,
                cy - (1.1 + person.hair_volume) * ry,
                hx + 1.2 * rx,
                cy + (1.0 + person.hair_length) * ry,
            ],
            radius=0.9 * rx,
            fill=paint.hair,
        )
    draw.rectangle([cx - 0.42 * rx, cy + 0.5 * ry, cx + 0.42 * rx, cy + 1.45 * ry], fill=paint.shadow)


def _draw_hair_on_back_of_head(draw, head: _Head, person: _Person, paint: _Palette) -> None:
    """A turned head shows hair on its back: a wedge from the crown down the back (longer if long hair)."""
    turn = abs(math.sin(head.yaw))
    if turn < 0.1:
        return
    span = turn * (95.0 + (55.0 if person.hair_length > 0 else 0.0))  # degrees clockwise from the crown
    widen = 1.0 + 0.12 * turn
    box = [head.cx - widen * head.rx, head.cy - (1.0 + person.hair_volume) * head.ry, head.cx + widen * head.rx, head.cy + head.ry]
    if head.yaw < 0:  # face turned to the image's left: the back of the head is on the right
        draw.pieslice(box, 270.0, 270.0 + span, fill=paint.hair)
    else:
        draw.pieslice(box, 270.0 - span, 270.0, fill=paint.hair)


def _draw_hair_cap(draw, head: _Head, person: _Person, paint: _Palette) -> None:
    hairline_y = head.cy - person.hairline * head.ry
    top_y = head.cy - (1.0 + person.hair_volume) * head.ry
    hx = head.cx - 0.2 * math.sin(head.yaw) * head.rx
    # Slightly wider than the face at the hairline, so the cap hugs the skull instead of a brim.
    half = 1.12 * head.half_width(hairline_y) * (1.0 + 0.12 * abs(math.sin(head.yaw))) + 0.05 * head.rx
    draw.chord([hx - half, top_y, hx + half, 2 * hairline_y - top_y], 180, 360, fill=paint.hair)
    if person.fringe:
        side = math.copysign(1.0, person.fringe)
        reach = abs(person.fringe)
        draw.polygon(
            [
                (hx - side * 0.9 * half, hairline_y),
                (hx + side * 0.6 * half, hairline_y),
                (hx + side * 0.75 * half, hairline_y + reach * 0.25 * head.ry),
            ],
            fill=paint.hair,
        )


def _draw_ears(draw, head: _Head, paint: _Palette, in_front: bool) -> None:
    y = head.cy + head.px(0.05)
    for side in (-1, 1):
        x, facing = head.place(side * 1.0, y)
        if facing < -0.3 or (facing > 0.5) != in_front:
            continue
        half_w = head.rx * 0.13 * max(0.45, abs(facing) if in_front else 1.0)
        _ellipse(draw, x, y, half_w, head.px(0.17), paint.skin, outline=paint.shadow, width=_stroke(head, 0.012))


def _draw_eye(canvas, head: _Head, person: _Person, shape: ExpressionShape, paint: _Palette, side: int) -> None:
    """Sclera, iris and pupil clipped to the eye opening, then the upper lid."""
    y = head.cy + head.px(person.eye_level)
    x, facing = head.place(side * person.eye_u, y)
    if facing < 0.15:
        return
    half_w = head.rx * 0.19 * person.eye_size * facing * head.features
    half_h = head.rx * 0.095 * person.eye_size * max(0.2, shape.eye_open) * head.features
    box = (int(x - half_w) - 1, int(y - half_h) - 1, int(x + half_w) + 2, int(y + half_h) + 2)
    size = (box[2] - box[0], box[3] - box[1])
    eye = Image.new("RGB", size, (238, 236, 232))
    eye_draw = ImageDraw.Draw(eye)
    ox, oy = x - box[0], y - box[1]
    iris_r = head.rx * 0.085 * person.eye_size * head.features
    _ellipse(eye_draw, ox, oy, iris_r * facing, iris_r, paint.iris)
    _ellipse(eye_draw, ox, oy, 0.45 * iris_r * facing, 0.45 * iris_r, (15, 12, 12))
    mask = Image.new("L", size, 0)
    _ellipse(ImageDraw.Draw(mask), ox, oy, half_w, half_h, 255)
    canvas.paste(eye, box[:2], mask)
    lid_top = y - 0.87 * half_h
    lid = [(x - half_w, y), (x - 0.5 * half_w, lid_top), (x + 0.5 * half_w, lid_top), (x + half_w, y)]
    lid_width = 0.02 if person.gender == "F" else 0.012
    ImageDraw.Draw(canvas).line(lid, fill=(35, 25, 25), width=_stroke(head, lid_width * head.features), joint="curve")


def _draw_brow(draw, head: _Head, person: _Person, shape: ExpressionShape, paint: _Palette, side: int) -> None:
    scale = head.features
    level = person.eye_level - person.brow_gap + 0.17 * shape.brow_raise
    if scale != 1.0:  # the brow's distance from the eye grows with the features
        level = person.eye_level + scale * (level - person.eye_level)
    base_y = head.cy + head.px(level)
    tilt = head.px(0.13 * shape.brow_tilt) * scale
    stops = (  # (u across the face, height offset): inner end, arch, outer end
        (person.eye_u + scale * -0.2, -tilt),
        (person.eye_u + scale * 0.02, -head.px(person.brow_arch) * scale - 0.3 * tilt),
        (person.eye_u + scale * 0.24, 0.3 * tilt),
    )
    points = []
    for u, offset in stops:
        x, facing = head.place(side * u, base_y)
        if facing < 0.1:
            return
        points.append((x, base_y + offset))
    draw.line(points, fill=paint.brow, width=_stroke(head, person.brow_thickness * scale), joint="curve")


def _draw_nose(draw, head: _Head, person: _Person, shape: ExpressionShape, paint: _Palette) -> None:
    bridge_y = head.cy + head.px(person.eye_level + 0.05)
    tip_y = head.cy + head.px(0.3 * person.nose_length)
    turn = math.sin(head.yaw)
    bridge_x, _ = head.place(0.0, bridge_y)
    tip_x = head.cx + (head.half_width(tip_y) + 0.2 * head.rx * person.nose_length) * turn
    base_x, _ = head.place(0.0, tip_y + head.px(0.06))
    stroke = _stroke(head, 0.022)
    draw.polygon([(bridge_x, bridge_y), (tip_x, tip_y), (base_x, tip_y + head.px(0.06))], fill=paint.skin, outline=paint.shadow)
    draw.line([(bridge_x, bridge_y), (tip_x, tip_y)], fill=paint.shadow, width=stroke)
    for side in (-1, 1):
        nx, facing = head.place(side * 0.11, tip_y)
        if facing > 0.2:
            _ellipse(draw, nx, tip_y + head.px(0.02), head.rx * 0.045 * facing, head.px(0.025), paint.shadow)
    if shape.nose_wrinkle > 0.5:
        for k in (0, 1):
            y = bridge_y + head.px(0.07 + 0.05 * k)
            x0, _ = head.place(-0.09, y)
            x1, _ = head.place(0.09, y)
            draw.line([(x0, y), (x1, y)], fill=paint.shadow, width=stroke)
    if shape.folds > 0.4:
        mouth_y = head.mouth_y
        for side in (-1, 1):
            start = head.place(side * 0.2, tip_y)
            end = head.place(side * (0.42 * person.mouth_width * shape.mouth_width * head.features + 0.06), mouth_y)
            if min(start[1], end[1]) > 0.2:
                draw.line([(start[0], tip_y), (end[0], mouth_y)], fill=paint.shadow, width=stroke)


def _draw_forehead_lines(draw, head: _Head, shape: ExpressionShape, paint: _Palette) -> None:
    if shape.forehead_lines < 0.5:
        return
    for k in (0, 1):
        y = head.cy - head.px(0.38 + 0.08 * k)
        x0, f0 = head.place(-0.35, y)
        x1, f1 = head.place(0.35, y)
        if min(f0, f1) > 0.1:
            draw.line(
                [(x0, y), ((x0 + x1) / 2, y - head.px(0.02)), (x1, y)],
                fill=paint.shadow,
                width=_stroke(head, 0.02 * head.features),
                joint="curve",
            )


def _draw_mouth(draw, head: _Head, person: _Person, shape: ExpressionShape, paint: _Palette) -> None:
    """Lips along a parabola (corners up = smile); an open mouth is a dark lens between two lips."""
    mouth_y = head.mouth_y
    mouth_x, facing = head.place(0.0, mouth_y)
    half_w = head.rx * 0.4 * person.mouth_width * max(0.3, shape.mouth_width) * max(0.3, facing) * head.features
    t = np.linspace(-1.0, 1.0, 17)
    xs = mouth_x + half_w * t
    lip_line = mouth_y - head.px(0.13 * shape.mouth_curve) * head.features * t**2 - head.px(0.05 * shape.asymmetry) * head.features * t
    opening = head.px(0.42 * max(0.0, shape.mouth_open)) * head.features * (1 - t**2)
    upper = lip_line - shape.upper_lift * opening
    lower = lip_line + (1 - shape.upper_lift) * opening
    lip = _stroke(head, person.lip_thickness * head.features * (1 - 0.55 * min(1.0, max(0.0, shape.lip_press))))
    if shape.mouth_open < 0.12:
        draw.line(list(zip(xs, lip_line)), fill=paint.lips, width=lip, joint="curve")
        return
    draw.polygon(list(zip(xs, upper)) + list(zip(xs[::-1], lower[::-1])), fill=(45, 12, 18))
    if shape.teeth > 0.5:
        teeth_edge = upper + 0.4 * (lower - upper)
        draw.polygon(list(zip(xs, upper)) + list(zip(xs[::-1], teeth_edge[::-1])), fill=(236, 232, 222))
    draw.line(list(zip(xs, upper)), fill=paint.lips, width=max(1, int(0.7 * lip)), joint="curve")
    draw.line(list(zip(xs, lower)), fill=paint.lips, width=lip, joint="curve")


def _ellipse(draw, cx: float, cy: float, rx: float, ry: float, fill, outline=None, width: int = 1) -> None:
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill, outline=outline, width=width)


def _stroke(head: _Head, fraction: float) -> int:
    """A line width given as a fraction of the head height, in whole px (at least 1)."""
    return max(1, round(head.px(fraction)))


def _rgb(values) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(v)))) for v in values)
    return r, g, b
