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
def test_finished_trials_keep_their_model_once_and_checkpoint_the_chosen_epochs(tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_RAY_CACHE", str(tmp_path / ".cache"))
    try:
        sets = [*TINY, "search.seeds=[0]", "train.epochs=3", "failure.checkpoint_every=2"]
        code = main([str(REPO / "sweeps" / "quickstart.yaml"), "--num-cpus", "2", "--set", *sets])
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
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        checkpointed = {row["epoch"]: row.get("checkpoint_dir_name") is not None for row in rows if "val_acc" in row}
        assert checkpointed == {1: False, 2: True, 3: True}, "failure.checkpoint_every: 2: epoch 2 and the last"
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        assert len(checkpoints) == 1, "one Tune checkpoint per trial"
        assert [p.name for p in checkpoints[0].iterdir()] == [FINISHED_FILE], "no weights, no optimizer state left"
        assert json.loads((checkpoints[0] / FINISHED_FILE).read_text())[TRIAL_FINISHED] is True
    assert not list((tmp_path / "ray_results").rglob(CHECKPOINT_FILE))
    assert sizes["ray_results"] < weights / 10, "Tune's folder holds results, not models"


@pytest.mark.slow
def test_a_trial_restored_from_its_finished_checkpoint_is_not_run_again(tmp_path, monkeypatch):
    """A trial lost after its final report (here: it raises once, after run_trial returned) is retried
    by Tune from its latest checkpoint, the finished.json: it reports the same final metrics again
    and trains nothing (one MLflow run, every epoch logged once)."""
    import ray
    from ray import tune

    from fer_ray.orchestrate.resources import local_capacity, resolve_resources, resolved_spec
    from fer_ray.orchestrate.spec import resolve_spec
    from fer_ray.orchestrate.tracking import Tracker
    from fer_ray.orchestrate.trial import run_trial

    monkeypatch.setenv("FER_RAY_CACHE", str(tmp_path / ".cache"))
    spec = resolve_spec({"name": "lost", "experiment": "finetune"}, [*TINY, "train.epochs=2"])
    spec = resolved_spec(spec, resolve_resources(spec, local_capacity(1)))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "lost")
    parent_id = tracker.parent_run("lost", sweep_id="lost-1")
    lost_once = tmp_path / "lost_once"

    def lost_after_final_report(config, **bound):
        run_trial(config, **bound)
        if not lost_once.exists():
            lost_once.touch()
            raise RuntimeError("node lost after the final report")

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        results = tune.Tuner(
            tune.with_resources(tune.with_parameters(lost_after_final_report, spec=spec, tracker=tracker, parent_id=parent_id), {"cpu": 1}),
            param_space={"train.lr": 0.001},
            run_config=tune.RunConfig(
                name="lost-1",
                storage_path=str(tmp_path / "ray_results"),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        ).fit()
    finally:
        ray.shutdown()
    (result,) = list(results)
    assert result.error is None and lost_once.exists(), "the trial failed once and was retried"
    assert result.metrics[TRIAL_FINISHED] is True and 0 <= result.metrics["test_acc"] <= 1
    (child,) = tracker.child_runs(parent_id)
    assert child.info.status == "FINISHED" and result.metrics["mlflow_run_id"] == child.info.run_id
    steps = [m.step for m in tracker.client.get_metric_history(child.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2], f"the retry trained again: steps {steps}"
