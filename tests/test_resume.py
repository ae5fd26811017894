"""``--resume`` trusts only what the user configured: Tune state inside the configured storage (restoring
unpickles Tune's files, and the path comes from an MLflow tag), and the spec the sweep started with (a
``--set`` that would change it is refused, not silently ignored).

The refusals run the real command line against a real ``mlflow server``: a parent run planted there
points at a folder whose ``tuner.pkl`` makes a marker folder when unpickled, so a test sees whether
anything was unpickled.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, MlflowServer
from fer_ray.orchestrate.driver import TAG_TUNE_PATH, changed_on_resume, experiment_path, inside_storage
from fer_ray.orchestrate.spec import load_spec
from fer_ray.orchestrate.tracking import Tracker

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"


@pytest.mark.parametrize(
    ("tune_path", "storage", "inside"),
    [
        ("/data/ray_results/quickstart-1", "/data/ray_results", True),
        ("file:///data/ray_results/quickstart-1", "/data/ray_results", True),
        ("/data/ray_results/quickstart-1", "file:///data/ray_results/", True),
        ("/data/ray_results/../elsewhere/quickstart-1", "/data/ray_results", False),
        ("/data/ray_results_x/quickstart-1", "/data/ray_results", False),
        ("/data/ray_results", "/data/ray_results", False),
        ("/tmp/quickstart-1", "/data/ray_results", False),
        ("", "/data/ray_results", False),
        ("s3://bucket/p/quickstart-1", "s3://bucket/p", True),
        ("s3://bucket/p/../q/quickstart-1", "s3://bucket/p", False),
        ("s3://other/p/quickstart-1", "s3://bucket/p", False),
        ("gs://bucket/p/quickstart-1", "s3://bucket/p", False),
        ("s3://bucket/p/quickstart-1?endpoint_override=http://10.9.9.9:9000", "s3://bucket/p", False),
        ("/data/ray_results/quickstart-1", "s3://bucket/data/ray_results", False),
    ],
)
def test_inside_storage(tune_path, storage, inside):
    assert inside_storage(tune_path, storage) is inside


def test_inside_storage_keeps_a_storage_uris_query_and_follows_symbolic_links(tmp_path):
    storage = "s3://bucket/p?endpoint_override=http://10.0.0.3:9000"
    assert inside_storage(experiment_path(storage, "quickstart-1"), storage)
    (tmp_path / "storage").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "storage" / "link").symlink_to(tmp_path / "elsewhere")
    assert inside_storage(str(tmp_path / "storage" / "run"), str(tmp_path / "storage"))
    assert not inside_storage(str(tmp_path / "storage" / "link" / "run"), str(tmp_path / "storage"))


def test_changed_on_resume_names_what_the_command_changes():
    stored = load_spec(QUICKSTART, [*TINY])
    assert changed_on_resume(load_spec(QUICKSTART, [*TINY]), stored) == []
    assert changed_on_resume(load_spec(QUICKSTART, [*TINY, "tracking.uri=sqlite:////x/m.db", "storage.path=/y"]), stored) == []
    assert changed_on_resume(load_spec(QUICKSTART, [*TINY, "train.epochs=5"]), stored) == ["train.epochs: started with 2, now 5"]
    # the driver adds an evaluation sweep's models to the grid it stores: keys only the stored spec has are not changes
    grid = {**stored.search.grid, "source.model": ["runs:/abc/model"]}
    with_models = stored.model_copy(update={"search": stored.search.model_copy(update={"grid": grid})})
    assert changed_on_resume(stored, with_models) == []


# ------------------------------------------------------------------------------------------------
# the command line against a real mlflow server
# ------------------------------------------------------------------------------------------------


class _MakesFolder:
    """Unpickled, it makes the folder ``path``: the planted tuner.pkl shows whether it was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def _plant(server: MlflowServer, experiment: str, tune_path: Path, marker: Path, overrides: list[str]) -> None:
    """An unfinished parent run of quickstart (spec ``overrides``) whose Tune path tag names ``tune_path``,
    which holds a tuner.pkl that makes ``marker`` when unpickled."""
    tune_path.mkdir(parents=True)
    (tune_path / "tuner.pkl").write_bytes(pickle.dumps(_MakesFolder(marker)))
    spec = load_spec(QUICKSTART, overrides)
    tracker = Tracker(server.uri, experiment)
    parent_id = tracker.parent_run(spec.name, sweep_id=f"{spec.name}-planted", tags={TAG_TUNE_PATH: str(tune_path)})
    tracker.log_spec(parent_id, spec.model_dump(mode="json"), "spec.json")


def _resume(server: MlflowServer, experiment: str, storage: Path, cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fer_ray.sweep", str(QUICKSTART), "--resume", "--num-cpus", "1",
               "--tracking-uri", server.uri, "--storage", str(storage),
               "--set", *TINY, f"tracking.experiment={experiment}", *overrides]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_resume_refuses_tune_state_outside_the_storage_and_a_changing_set(mlflow_server, tmp_path):
    storage = tmp_path / "storage"
    marker = tmp_path / "unpickled"

    # a tag that points outside the configured storage: refused, nothing unpickled
    outside = tmp_path / "elsewhere" / "quickstart-20260101-000000"
    _plant(mlflow_server, "resume-outside", outside, marker, [*TINY])
    refused = _resume(mlflow_server, "resume-outside", storage, tmp_path)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert str(outside) in refused.stderr and f"not inside the configured storage {storage}" in refused.stderr
    assert not marker.exists(), "tuner.pkl from outside the storage was unpickled"

    # inside the storage, but --set would change the spec the sweep started with: refused before restoring
    inside = storage / "quickstart-20260101-000000"
    _plant(mlflow_server, "resume-set", inside, marker, [*TINY])
    refused = _resume(mlflow_server, "resume-set", storage, tmp_path, "train.epochs=5", "train.lr=0.01")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "train.epochs: started with 2, now 5" in refused.stderr and "train.lr: started with 0.001, now 0.01" in refused.stderr
    assert "--set" in refused.stderr and "without --resume" in refused.stderr
    assert not marker.exists()

    # the same run resumed as it started: Tune restores from the configured storage, and the planted
    # tuner.pkl is unpickled (the marker shows that the two refusals above would have seen it)
    trusted = _resume(mlflow_server, "resume-set", storage, tmp_path)
    assert marker.is_dir(), trusted.stdout[-2000:] + trusted.stderr[-2000:]
    assert trusted.returncode != 0, "the planted tuner.pkl holds no Tuner"
