"""Synthetic KDEF-format faces: layout, determinism, expression signal, the cached default root."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fer_ray.core.config import DataConfig, SyntheticConfig
from fer_ray.core.data import EXPRESSIONS, synthetic
from fer_ray.core.data.datasets import default_cache_dir, read_dataset
from fer_ray.core.data.kdef import read_kdef
from fer_ray.core.data.synthetic import generate_synthetic_kdef, synthetic_root

TINY = SyntheticConfig(identities=2, angles=["S", "HR"], width=40, height=52, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _gray32(path: Path) -> np.ndarray:
    """float32 (32, 32) grayscale in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def fixture_faces(synthetic_root):
    """The conftest set read back: (dataset, (N, 32, 32) grayscale pixels)."""
    dataset = read_kdef(synthetic_root)
    return dataset, np.stack([_gray32(im.path) for im in dataset.images])


def test_layout_counts_and_names(synthetic_root, fixture_faces):
    dataset, _ = fixture_faces
    assert len(dataset) == 2 * 2 * 12 * 7  # sessions x genders x people x expressions (angle S)
    assert len(set(dataset.identities)) == 24
    assert set(dataset.attribute("angle")) == {"S"} and set(dataset.attribute("session")) == {"A", "B"}
    assert sorted(set(dataset.labels.tolist())) == list(range(7))
    assert (synthetic_root / "BM12" / "BM12SUS.JPG").is_file()
    assert {p.parent.name[:4] == p.name[:4] for p in synthetic_root.rglob("*.JPG")} == {True}
    with Image.open(dataset.images[0].path) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 88))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a single odd file name would raise here
        read_kdef(synthetic_root)


def test_generation_is_deterministic_and_people_are_stable(tmp_path):
    first = _files(generate_synthetic_kdef(tmp_path / "one", TINY))
    second = _files(generate_synthetic_kdef(tmp_path / "two", TINY))
    assert len(first) == 2 * 2 * 2 * 7 * 2
    assert first == second

    # A person looks the same however many people are generated ...
    more_people = _files(generate_synthetic_kdef(tmp_path / "three", TINY.model_copy(update={"identities": 3})))
    assert {name: more_people[name] for name in first} == first
    # ... and another seed draws other people.
    other_seed = _files(generate_synthetic_kdef(tmp_path / "four", TINY.model_copy(update={"seed": 4})))
    assert all(other_seed[name] != data for name, data in first.items())


#: sha256 over the RGB pixels of every TINY face (synthetic_names order) and TINY's cache key, as
#: generator version 2 drew them before feature_scale existed: the default must stay byte-identical.
TINY_PIXELS_SHA256 = "f5ef3dafa0e509628d689d043dea89c3472a45624eb782883a1661e5dfd14384"
TINY_CONFIG_HASH = "7868347718fe7048"


def _pixel_digest(cfg: SyntheticConfig) -> str:
    digest = hashlib.sha256()
    for name in synthetic.synthetic_names(cfg):
        digest.update(synthetic.render_synthetic_face(name, cfg).tobytes())
    return digest.hexdigest()


def test_default_feature_scale_keeps_the_images_and_the_cache_key():
    assert TINY.feature_scale == 1.0
    assert _pixel_digest(TINY) == TINY_PIXELS_SHA256
    assert synthetic.config_hash(TINY) == TINY_CONFIG_HASH
    assert synthetic.config_hash(TINY.model_copy(update={"feature_scale": 1.0})) == TINY_CONFIG_HASH


def test_feature_scale_draws_larger_expressions_under_its_own_cache_key(tmp_path):
    bold = TINY.model_copy(update={"feature_scale": 1.4})
    assert synthetic.config_hash(bold) != TINY_CONFIG_HASH
    assert synthetic.config_hash(bold) != synthetic.config_hash(TINY.model_copy(update={"feature_scale": 1.2}))
    assert synthetic_root(bold, tmp_path) != synthetic_root(TINY, tmp_path)
    plain, large = (generate_synthetic_kdef(tmp_path / label, cfg) for label, cfg in (("plain", TINY), ("large", bold)))
    # Every face changes, and expressions of one person differ more from neutral (same person, session, angle).
    expression_gap = {"plain": [], "large": []}
    for person in ("AF01", "AF02", "AM01", "AM02"):
        for angle in ("S", "HR"):
            for root, label in ((plain, "plain"), (large, "large")):
                neutral = _gray32(root / person / f"{person}NE{angle}.JPG")
                for code in ("AF", "AN", "DI", "HA", "SA", "SU"):
                    expression_gap[label].append(np.abs(_gray32(root / person / f"{person}{code}{angle}.JPG") - neutral).mean())
            for code in ("AF", "NE", "SU"):
                file = f"{person}/{person}{code}{angle}.JPG"
                assert (plain / file).read_bytes() != (large / file).read_bytes()
    assert np.mean(expression_gap["large"]) > 1.05 * np.mean(expression_gap["plain"])  # 0.050 vs 0.045


def test_angle_changes_the_image_more_than_the_session(tmp_path):
    root = generate_synthetic_kdef(tmp_path, TINY)
    angle_gap, session_gap = [], []
    for person in ("F01", "F02", "M01", "M02"):
        for code in ("AF", "AN", "DI", "HA", "NE", "SA", "SU"):
            straight = _gray32(root / f"A{person}" / f"A{person}{code}S.JPG")
            angle_gap.append(np.abs(straight - _gray32(root / f"A{person}" / f"A{person}{code}HR.JPG")).mean())
            session_gap.append(np.abs(straight - _gray32(root / f"B{person}" / f"B{person}{code}S.JPG")).mean())
    assert np.mean(angle_gap) > 1.5 * np.mean(session_gap)


def test_expressions_differ_more_than_sessions(fixture_faces):
    dataset, pixels = fixture_faces
    row = {(im.identity, im.session, im.expression): i for i, im in enumerate(dataset.images)}
    people = sorted(set(dataset.identities))
    session_gap = [np.abs(pixels[row[p, "A", e]] - pixels[row[p, "B", e]]).mean() for p in people for e in EXPRESSIONS]
    expression_gap = [
        np.abs(pixels[row[p, s, e1]] - pixels[row[p, s, e2]]).mean()
        for p in people
        for s in ("A", "B")
        for k, e1 in enumerate(EXPRESSIONS)
        for e2 in EXPRESSIONS[k + 1 :]
    ]
    assert np.mean(expression_gap) > np.mean(session_gap)


def _held_out_people_accuracy(dataset, pixels, labels) -> float:
    """A linear classifier on raw 32x32 pixels, trained on people 1-8 and tested on 9-12 of each gender."""
    person_number = np.array([int(identity[1:]) for identity in dataset.identities])
    train, test = person_number <= 8, person_number > 8
    features = pixels.reshape(len(pixels), -1)
    classifier = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0))
    classifier.fit(features[train], labels[train])
    return float((classifier.predict(features[test]) == labels[test]).mean())


def test_expressions_are_learnable_across_people(fixture_faces):
    """Expressions are clear at 32 px: even a linear classifier on pixels gets most held-out people's
    expressions right (generator 1, with smaller faces and fainter features, gave 0.50)."""
    dataset, pixels = fixture_faces
    accuracy = _held_out_people_accuracy(dataset, pixels, dataset.labels)
    assert accuracy > 0.6, f"held-out-people accuracy {accuracy:.3f} (chance 0.143)"


def test_gender_still_shows_across_people(fixture_faces):
    dataset, pixels = fixture_faces
    gender = np.array([identity[0] == "F" for identity in dataset.identities], dtype=np.int64)
    accuracy = _held_out_people_accuracy(dataset, pixels, gender)
    assert accuracy > 0.8, f"held-out-people gender accuracy {accuracy:.3f} (chance 0.5)"


def test_lighting_varies_between_photos(fixture_faces):
    """Each session has its own side light: the right-minus-left brightness of the background strips
    differs between a person's two sessions, and from photo to photo within one."""
    dataset, pixels = fixture_faces
    balance = pixels[:, :6, -3:].mean(axis=(1, 2)) - pixels[:, :6, :3].mean(axis=(1, 2))
    row = {(im.identity, im.session, im.expression): i for i, im in enumerate(dataset.images)}
    people = sorted(set(dataset.identities))
    between_sessions = [abs(balance[row[p, "A", "neutral"]] - balance[row[p, "B", "neutral"]]) for p in people]
    within_session = [balance[[row[p, "A", e] for e in EXPRESSIONS]].std() for p in people]
    assert np.median(between_sessions) > 0.02  # 0.02 = 5 grey levels
    assert np.median(within_session) > 0.002
    assert np.median(between_sessions) > 2 * np.median(within_session)


def test_synthetic_root_is_made_once_and_reused(tmp_path):
    cache = tmp_path / "cache"
    root = synthetic_root(TINY, cache)
    assert root.parent == cache / "synthetic"
    assert len(read_kdef(root)) == 112
    stamp = (root / "AF01" / "AF01HAS.JPG").stat().st_mtime_ns

    assert synthetic_root(TINY, cache) == root
    assert (root / "AF01" / "AF01HAS.JPG").stat().st_mtime_ns == stamp
    other = synthetic_root(TINY.model_copy(update={"angles": ["S"]}), cache)
    assert other != root
    assert sorted(p.name for p in (cache / "synthetic").iterdir()) == sorted([root.name, other.name])


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    # Fault injection: the 5th face fails to render, as a crash or Ctrl-C halfway through would.
    render = synthetic.render_synthetic_face
    calls = []

    def failing_render(name, cfg):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return render(name, cfg)

    monkeypatch.setattr(synthetic, "render_synthetic_face", failing_render)
    with pytest.raises(KeyboardInterrupt):
        synthetic_root(TINY, tmp_path)
    assert list((tmp_path / "synthetic").iterdir()) == []

    monkeypatch.setattr(synthetic, "render_synthetic_face", render)
    assert len(read_kdef(synthetic_root(TINY, tmp_path))) == 112


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_RAY_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("FER_RAY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "fer_ray"


def test_read_dataset_synthetic(tmp_path, synthetic_root):
    cfg = DataConfig(synthetic=SyntheticConfig(identities=36, sessions=["A"], width=16, height=16), cache_dir=tmp_path)
    dataset = read_dataset(cfg)
    assert dataset.name == "synthetic"
    assert len(dataset) == 36 * 2 * 7
    assert "M36" in set(dataset.identities)  # beyond the 35 people of the real KDEF
    assert next((tmp_path / "synthetic").iterdir()) == dataset.images[0].path.parents[1]

    given_root = read_dataset(DataConfig(root=synthetic_root, sessions=["B"]))
    assert len(given_root) == 12 * 2 * 7 and set(given_root.attribute("session")) == {"B"}
