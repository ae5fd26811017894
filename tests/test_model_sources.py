"""Train once, evaluate many: real Ray, real MLflow (sqlite), real training."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import ray

from conftest import TINY
from fer_ray.orchestrate.model_sources import training_hash, training_spec
from fer_ray.orchestrate.spec import resolve_spec
from fer_ray.sweep import main

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"

pytestmark = pytest.mark.slow


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True)


def _training_runs(uri: str):
    runs = _runs(uri)
    return runs[(runs["tags.fer_ray.role"] == "child") & (runs["tags.fer_ray.experiment"] == "finetune")]


def _evaluation_runs(uri: str):
    runs = _runs(uri)
    return runs[(runs["tags.fer_ray.role"] == "child") & (runs["tags.fer_ray.experiment"] == "evaluate")]


def test_training_hash_ignores_evaluation_settings_and_follows_the_recipe():
    base = resolve_spec({"name": "a", "experiment": "evaluate"}, TINY)
    other_eval = resolve_spec({"name": "b", "experiment": "evaluate"}, TINY + ["settings.confusion_matrix=false", "resources.cpu=2"])
    other_recipe = resolve_spec({"name": "a", "experiment": "evaluate"}, TINY + ["train.lr=0.01"])
    assert training_hash(base) == training_hash(other_eval)
    assert training_hash(base) != training_hash(other_recipe)
    stage = training_spec(base, [3, 4])
    assert stage.experiment == "finetune" and stage.search.seeds == [3, 4]
    assert training_hash(stage) == training_hash(base), "the stage trains exactly the recipe it was derived from"
    profiled = resolve_spec(
        {"name": "a", "experiment": "evaluate", "profiles": {"fast": {"train.weight_decay": 0.01}}}, TINY, profile="fast"
    )
    stage = training_spec(profiled, [0])
    assert stage.profile == "fast" and stage.train.weight_decay == 0.01, "the stage says which profile's overrides it embeds"


def test_second_evaluation_sweep_trains_nothing_and_other_sources_work(tmp_path, monkeypatch, tiny_trained_model):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [str(SWEEPS / "evaluate.yaml"), "--num-cpus", "2", "--tracking-uri", uri, "--set", *TINY]
    try:
        # 1. source.model=train: the training stage runs first (two seeds -> two models)
        assert main(common + ["source.train_seeds=[0,1]"]) == 0
        trained = _training_runs(uri)
        assert len(trained) == 2 and set(trained["status"]) == {"FINISHED"}
        assert set(trained["tags.fer_ray.profile"]) == {"embedded"}, "the stage carries the profile of the sweep that started it"
        evaluated = _evaluation_runs(uri)
        assert len(evaluated) == 2, "one evaluation trial per trained model"
        assert set(evaluated["tags.fer_ray.source_run"]) == set(trained["run_id"])

        # 2. the same recipe again (another evaluation setting): no new training run
        assert main(common + ["source.train_seeds=[0,1]", "settings.confusion_matrix=false"]) == 0
        assert len(_training_runs(uri)) == 2
        assert len(_evaluation_runs(uri)) == 4

        # 3. one more seed: only that one is trained
        assert main(common + ["source.train_seeds=[0,1,2]"]) == 0
        assert len(_training_runs(uri)) == 3

        # 4. an MLflow run reference and 5. a model file as the source: nothing is trained
        run_id = trained["run_id"].iloc[0]
        assert main(common + [f"source.model=runs:/{run_id}/model/model.pt"]) == 0
        assert main(common + [f"source.model={tiny_trained_model}"]) == 0
        assert len(_training_runs(uri)) == 3
        evaluated = _evaluation_runs(uri)
        sources = set(evaluated["tags.fer_ray.source_model"])
        assert f"runs:/{run_id}/model/model.pt" in sources and str(tiny_trained_model) in sources
        assert evaluated["metrics.test_acc"].between(0, 1).all()
    finally:
        ray.shutdown()


def test_missing_model_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope.pt"
    code = main(
        [str(SWEEPS / "evaluate.yaml"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--set", *TINY, f"source.model={missing}"]
    )
    assert code == 2
    assert f"source.model: model file '{missing}' not found" in capsys.readouterr().err
    assert not ray.is_initialized(), "the error came before Ray started"
