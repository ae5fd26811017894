"""--dry-run (issue 14): the plan, the training stage (new or reused, with its run id), the pre-flight
results and an honest time estimate, without Ray, MLflow or torch in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from fer_ray.orchestrate.spec import load_spec
from fer_ray.sweep import main

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _client(workdir: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def test_evaluation_sweep_says_the_training_stage_is_new_then_reused_with_its_run_id(workdir, capsys):
    from fer_ray.orchestrate.model_sources import TAG_TRAIN_HASH, training_hash

    assert main([str(SWEEPS / "noise_sig.yaml"), "--set", *TINY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "10 trials" in out and "settings.noise_seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in out
    assert "training stage: new: noise_sig-train trains seed(s) [0] first" in out
    assert "ok  source.model: train" in out and "ok  data (synthetic, generated faces)" in out

    spec = load_spec(SWEEPS / "noise_sig.yaml", list(TINY))
    client = _client(workdir)
    run = client.create_run(client.create_experiment("fer_ray"), tags={TAG_TRAIN_HASH: training_hash(spec)})
    client.set_terminated(run.info.run_id, "FINISHED")
    assert main([str(SWEEPS / "noise_sig.yaml"), "--set", *TINY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"training stage: reused for train seed 0: MLflow run {run.info.run_id}" in out and "training stage: new" not in out


def test_time_estimate_comes_from_earlier_trials_or_is_not_given(workdir, capsys):
    args = [str(SWEEPS / "quickstart.yaml"), "--set", *TINY, "--num-cpus", "2", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "time: no estimate (no finished trial of sweep quickstart" in out and "PFLOP" not in out
    assert "4 trials" in out and "up to 2 at once on this machine: 2 CPU, 0 GPU" in out

    client = _client(workdir)
    experiment = client.create_experiment("fer_ray")
    now = int(time.time() * 1000)
    for seconds in (50, 60, 70):  # three finished trials of an earlier run; a parent run does not count
        run = client.create_run(experiment, start_time=now, tags={"fer_ray.sweep": "quickstart", "fer_ray.role": "child"})
        client.set_terminated(run.info.run_id, "FINISHED", end_time=now + seconds * 1000)
    parent = client.create_run(experiment, start_time=now, tags={"fer_ray.sweep": "quickstart", "fer_ray.role": "parent"})
    client.set_terminated(parent.info.run_id, "FINISHED", end_time=now + 3600_000)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "time: about 2.0 min for the sweep's trials: 2 round(s) of up to 2 x median 60 s per trial" in out
    assert "over 3 earlier finished trial(s)" in out


def test_dry_run_imports_no_ray_mlflow_or_torch(tmp_path):
    code = (
        "import sys; from fer_ray.sweep import main; "
        f"assert main([{str(SWEEPS / 'quickstart.yaml')!r}, '--dry-run', '--set', 'data.cache_dir={tmp_path}']) == 0; "
        "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = set(done.stdout.split("MODULES", 1)[1].split())
    assert "fer_ray" in modules and "PIL" in modules, "the pre-flight decoded the generated faces"
    assert not {"ray", "mlflow", "torch", "torchvision", "sklearn", "matplotlib"} & modules
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_sqlite_store_reads_the_tags_tracking_writes():
    from fer_ray.orchestrate import sqlite_store, tracking

    assert (sqlite_store.TAG_SWEEP, sqlite_store.TAG_ROLE, sqlite_store.ROLE_PARENT) == (
        tracking.TAG_SWEEP,
        tracking.TAG_ROLE,
        tracking.ROLE_PARENT,
    )
    assert json.dumps(str(sqlite_store.sqlite_path("sqlite:////data/mlflow.db"))) == '"/data/mlflow.db"'
    assert sqlite_store.sqlite_path("http://127.0.0.1:5000") is None


def test_dry_run_says_when_every_training_set_size_trains_the_same_steps(workdir, capsys):
    """dataset_fraction's embedded profile draws 378 images per epoch for every fraction
    (train.images_per_epoch): the plan says so, so no one reads a data effect into a step count."""
    assert main([str(SWEEPS / "dataset_fraction.yaml"), "--dry-run"]) == 0
    assert "resnet18 (weights none), 4 epochs of 378 images (the same steps whatever the training-set size)" in capsys.readouterr().out
    assert main([str(SWEEPS / "quickstart.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "epochs of" not in out and " epochs\n" in out
