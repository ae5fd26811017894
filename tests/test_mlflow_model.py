"""Trained models as MLflow Models (pyfunc) and models:/ sources, against real MLflow on sqlite."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from fer_ray.core.evaluate import predict_proba
from fer_ray.core.model_file import load_model
from fer_ray.orchestrate.mlflow_model import (
    log_pyfunc,
    pinned_requirements,
    register,
    resolve_registered,
    weights_file,
)
from fer_ray.orchestrate.spec import SpecError
from fer_ray.orchestrate.tracking import Tracker

IMAGE_SIZE = 32  # conftest.TINY's data.image_size, which tiny_trained_model was trained at


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_trained_model) -> tuple[Tracker, str]:
    """One run holding the tiny model as an MLflow Model."""
    folder = tmp_path_factory.mktemp("pyfunc_db")
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", "pyfunc")
    tracker.check()
    run_id = tracker.child_run(tracker.parent_run("p", "p-1"), "k", "train")
    assert log_pyfunc(tracker, run_id, tiny_trained_model, IMAGE_SIZE) == f"runs:/{run_id}/model"
    tracker.finish(run_id)
    return tracker, run_id


def test_pyfunc_predicts_exactly_what_fer_ray_predicts(logged, tiny_trained_model, tmp_path):
    tracker, run_id = logged
    local = tracker.download_artifact(run_id, "model", tmp_path)
    pyfunc = mlflow.pyfunc.load_model(str(local))
    batch = torch.rand(5, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    model, classes = load_model(tiny_trained_model)
    expected = predict_proba(model, batch).numpy()
    predicted = pyfunc.predict(batch.numpy())
    assert predicted.shape == (5, len(classes)) == (5, 7)
    assert predicted.dtype == np.float32
    np.testing.assert_array_equal(predicted, expected)
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-5)


def test_logged_model_has_signature_example_pins_and_no_pickle(logged, tmp_path):
    tracker, run_id = logged
    local = Path(tracker.download_artifact(run_id, "model", tmp_path))
    spec = yaml.safe_load((local / "MLmodel").read_text())
    inputs, outputs = (yaml.safe_load(spec["signature"][key])[0] for key in ("inputs", "outputs"))
    assert inputs["tensor-spec"] == {"dtype": "float32", "shape": [-1, 3, IMAGE_SIZE, IMAGE_SIZE]}
    assert outputs["tensor-spec"] == {"dtype": "float32", "shape": [-1, 7]}
    assert spec["saved_input_example_info"]["type"] == "ndarray"
    assert spec["flavors"]["python_function"]["model_code_path"].endswith("pyfunc_entry.py")
    requirements = (local / "requirements.txt").read_text().split()
    assert set(pinned_requirements()) <= set(requirements)
    assert any(line.startswith("torch==") for line in requirements)
    assert not list(local.rglob("*.pkl")), "nothing of fer_ray may be cloudpickled"
    # fer_ray's own loader reads the weights inside the MLflow Model
    model, classes = load_model(weights_file(local))
    assert len(classes) == 7 and not model.training


def test_registry_versions_aliases_and_spec_errors(logged):
    tracker, run_id = logged
    assert register(tracker, run_id, "fer-tiny") == "1"
    assert register(tracker, run_id, "fer-tiny") == "2"
    tracker.client.set_registered_model_alias("fer-tiny", "champion", "1")
    by_alias = resolve_registered(tracker, "models:/fer-tiny@champion")
    assert (by_alias.version, by_alias.run_id, by_alias.uri) == ("1", run_id, "models:/fer-tiny/1")
    assert by_alias.tags()["fer_ray.source_run"] == run_id
    assert resolve_registered(tracker, "models:/fer-tiny/2").version == "2"
    with pytest.raises(SpecError, match=r"fer-tiny/7.*versions \[1, 2\] and aliases \['champion'\]"):
        resolve_registered(tracker, "models:/fer-tiny/7")
    with pytest.raises(SpecError, match="no registered model named 'nobody'"):
        resolve_registered(tracker, "models:/nobody@champion")
    with pytest.raises(SpecError, match="is not models:/<name>/<version>"):
        resolve_registered(tracker, "models:/fer-tiny")


def test_register_is_for_training_sweeps_only():
    from fer_ray.orchestrate.spec import resolve_spec

    assert resolve_spec({"name": "a", "experiment": "finetune", "register": "fer-kdef"}, []).register == "fer-kdef"
    with pytest.raises(SpecError, match="register: 'fer-kdef' needs a training sweep"):
        resolve_spec({"name": "a", "experiment": "evaluate", "register": "fer-kdef"}, [])
