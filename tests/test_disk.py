"""What a sweep leaves on disk: each trial's model once (its MLflow Model), and in Tune's folder only
results and a small "finished" checkpoint (no weights, no optimizer state) once the trial is done.
The quickstart's own figure: benchmarks/disk.py (stated in README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY
from fer_ray.orchestrate.trial import CHECKPOINT_FILE, FINISHED_FILE, TRIAL_FINISHED
from fer_ray.sweep import main

REPO = Path(__file__).resolve().parent.parent
#: what a sweep run in a folder writes there (the tensor cache under $FER_RAY_CACHE, here .cache)
OUTPUTS = ("ray_results", "mlartifacts", "mlflow.db", "reports", ".cache")


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_finished_trials_keep_their_model_once(tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_RAY_CACHE", str(tmp_path / ".cache"))
    try:
        code = main([str(REPO / "sweeps" / "quickstart.yaml"), "--num-cpus", "2", "--set", *TINY, "search.seeds=[0]"])
    finally:
        ray.shutdown()
    assert code == 0
    sizes = {name: folder_bytes(tmp_path / name) for name in OUTPUTS}
    print("bytes per folder:", sizes)

    models = sorted((tmp_path / "mlartifacts").rglob("*.pt"))
    assert [p.name for p in models] == ["model.pt", "model.pt"], "one model file per trial, nothing else with weights"
    weights = models[0].stat().st_size

    trial_dirs = [p for p in (tmp_path / "ray_results").glob("quickstart-*/*") if (p / "result.json").is_file()]
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        assert len(checkpoints) == 1, "one Tune checkpoint per trial"
        assert [p.name for p in checkpoints[0].iterdir()] == [FINISHED_FILE], "no weights, no optimizer state left"
        assert json.loads((checkpoints[0] / FINISHED_FILE).read_text())[TRIAL_FINISHED] is True
    assert not list((tmp_path / "ray_results").rglob(CHECKPOINT_FILE))
    assert sizes["ray_results"] < weights / 10, "Tune's folder holds results, not models"
