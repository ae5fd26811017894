"""Register from a training sweep, evaluate models:/<name>@<alias>: real Ray, a real `mlflow server`
with proxied artifacts, while this process's global registry URI points at another store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import ray

from conftest import TINY
from fer_ray.sweep import main

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"

pytestmark = pytest.mark.slow


def test_register_from_training_sweep_then_evaluate_by_alias(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", elsewhere)  # inherited by Ray's workers too
    mlflow.set_registry_uri(elsewhere)
    uri, experiment = mlflow_server.uri, "registry-e2e"
    common = ["--num-cpus", "2", "--tracking-uri", uri, "--set", *TINY, f"tracking.experiment={experiment}"]
    try:
        # a training sweep registers its best trial (by best_val_acc) under a name
        assert main([str(SWEEPS / "quickstart.yaml"), *common, "search.seeds=[0]", "register=fer-e2e"]) == 0
        out = capsys.readouterr().out
        assert "Registered models:/fer-e2e/1" in out
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        version = client.get_model_version("fer-e2e", "1")
        trained = client.get_run(version.run_id)
        children = client.search_runs([trained.info.experiment_id], "tags.`fer_ray.role` = 'child'")
        assert trained.data.metrics["best_val_acc"] == max(r.data.metrics["best_val_acc"] for r in children)
        client.set_registered_model_alias("fer-e2e", "champion", "1")

        # an evaluation sweep on the alias: resolved in the sweep's registry, trials fetch through the server
        assert main([str(SWEEPS / "evaluate.yaml"), *common, "source.model=models:/fer-e2e@champion"]) == 0
        evaluated = [
            r
            for r in client.search_runs([trained.info.experiment_id], "tags.`fer_ray.experiment` = 'evaluate'")
            if r.data.tags.get("fer_ray.role") == "child"
        ]
        assert len(evaluated) == 1 and evaluated[0].info.status == "FINISHED"
        tags = evaluated[0].data.tags
        assert tags["fer_ray.source_run"] == version.run_id
        assert (tags["fer_ray.source_model"], tags["fer_ray.source_model_version"]) == ("models:/fer-e2e/1", "1")
        assert 0 <= evaluated[0].data.metrics["test_acc"] <= 1
        assert mlflow.MlflowClient(registry_uri=elsewhere).search_registered_models() == [], "the global registry is untouched"

        # a version that does not exist is a spec error before Ray starts
        capsys.readouterr()
        assert main([str(SWEEPS / "evaluate.yaml"), *common, "source.model=models:/fer-e2e/9"]) == 2
        assert "models:/fer-e2e/9" in capsys.readouterr().err
    finally:
        ray.shutdown()
