"""ImageNet weights pre-flight, offline: file:// URLs stand in for torchvision's server (urllib serves
them like http), TORCH_HOME points at a temp folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision

from fer_ray.core.models import (
    WeightsError,
    WeightsNotFoundError,
    fetch_weights_file,
    imagenet_weights_file,
    verify_weights_hash,
)
from fer_ray.orchestrate.spec import SpecError, resolve_spec
from fer_ray.orchestrate.weights import imagenet_archs, prefetch_weights
from fer_ray.sweep import main

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


@pytest.fixture()
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _published(folder: Path, stem: str = "resnet18", prefix: str | None = None) -> Path:
    """A torchvision-style weights file ``<stem>-<sha256 prefix>.pth`` (or a wrong ``prefix``)."""
    folder.mkdir(parents=True, exist_ok=True)
    draft = folder / "draft.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), draft)
    digest = hashlib.sha256(draft.read_bytes()).hexdigest()
    return draft.rename(folder / f"{stem}-{prefix or digest[:8]}.pth")


def test_fetch_downloads_once_into_the_cache_and_checks_the_hash(tmp_path, torch_home):
    source = _published(tmp_path / "server")
    cached = fetch_weights_file(source.as_uri())
    assert cached == torch_home / source.name and cached.read_bytes() == source.read_bytes()
    source.unlink()  # the server is gone: the cache answers
    assert fetch_weights_file(source.as_uri()) == cached
    assert set(torch.load(cached, weights_only=True)) == set(torchvision.models.resnet18().state_dict())


def test_a_download_with_the_wrong_hash_is_refused_and_leaves_nothing(tmp_path, torch_home):
    source = _published(tmp_path / "server", prefix="deadbeef")
    with pytest.raises(WeightsError, match=r"download of .*resnet18-deadbeef.pth was refused.*deadbeef"):
        fetch_weights_file(source.as_uri())
    assert not list(torch_home.iterdir()), "no partial or wrong file stays in the cache"


def test_a_cached_file_with_the_wrong_hash_is_refused(tmp_path, torch_home):
    wrong = _published(torch_home, prefix="deadbeef")
    with pytest.raises(WeightsError, match=r"SHA-256 [0-9a-f]{16}\.\.\., but torchvision publishes deadbeef.*delete it"):
        verify_weights_hash(wrong)
    assert verify_weights_hash(_published(tmp_path / "ok")).is_file()


def test_offline_says_which_file_to_put_where(tmp_path, torch_home):
    missing = (tmp_path / "server" / "resnet50-11ad3fa6.pth").as_uri()
    with pytest.raises(WeightsNotFoundError, match=rf"cannot download .*place the file at {torch_home / 'resnet50-11ad3fa6.pth'}"):
        fetch_weights_file(missing)
    with pytest.raises(WeightsNotFoundError, match=r"resnet18.*expected the file .*resnet18-f37072fd.pth"):
        imagenet_weights_file("resnet18")  # build_model's lookup never downloads


def test_prefetch_covers_every_arch_a_sweep_builds_and_fails_as_a_spec_error(torch_home):
    grid = resolve_spec(
        {
            "name": "a",
            "experiment": "finetune",
            "model": {"weights": "imagenet"},
            "search": {"grid": {"model.arch": ["resnet50", "resnet18"]}},
        },
        [],
    )
    assert imagenet_archs(grid) == ["resnet18", "resnet50"]
    assert imagenet_archs(resolve_spec({"name": "a", "experiment": "finetune"}, [])) == []  # weights none
    evaluation = resolve_spec(
        {"name": "a", "experiment": "noise", "model": {"weights": "imagenet"}, "source": {"model": "models:/m/1"}}, []
    )
    assert imagenet_archs(evaluation) == []
    wrong = _published(torch_home, prefix="f37072fd")  # resnet18's published name, other content
    spec = resolve_spec({"name": "a", "experiment": "finetune", "model": {"arch": "resnet18", "weights": "imagenet"}}, [])
    with pytest.raises(SpecError, match=f"model.weights: imagenet: weights file {wrong}"):
        prefetch_weights(spec)


def test_the_driver_stops_before_ray_with_one_line(torch_home, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _published(torch_home, prefix="f37072fd")
    code = main(
        [
            str(SWEEPS / "quickstart.yaml"),
            "--set",
            "model.arch=resnet18",
            "model.weights=imagenet",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: model.weights: imagenet: weights file")
    assert not (tmp_path / "ray_results").exists()


def test_the_dry_run_finds_imagenet_files_where_torch_would(torch_home, monkeypatch, tmp_path, capsys):
    """weights.IMAGENET_FILES and hub_checkpoints() (torch-free, for --dry-run) agree with torchvision and torch.hub."""
    from fer_ray.orchestrate.weights import IMAGENET_FILES, hub_checkpoints

    for arch, name in IMAGENET_FILES.items():
        assert torchvision.models.get_model_weights(arch).DEFAULT.url.endswith("/" + name)
    assert hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints" == torch_home
    monkeypatch.chdir(tmp_path)
    args = [str(SWEEPS / "quickstart.yaml"), "--set", "model.weights=imagenet", "--dry-run"]
    assert main(args) == 0
    assert (
        f"model.weights: imagenet resnet18: {torch_home / IMAGENET_FILES['resnet18']} missing: fetched at start" in capsys.readouterr().out
    )
    torch_home.mkdir(parents=True)
    (torch_home / IMAGENET_FILES["resnet18"]).write_bytes(b"")
    assert main(args) == 0
    assert "resnet18-f37072fd.pth found" in capsys.readouterr().out
