"""One module per ``experiment:`` kind of a sweep file, each describing itself with one typed
:class:`~fer_ray.experiments.contract.Experiment` (its settings model, trial function, report
function, the artifacts its report reads), registered in :data:`REGISTRY`.

A new experiment is one module here (its ``Settings`` model, its trial and report functions, and
``EXPERIMENT = Experiment(...)``), one YAML file in sweeps/ and one line in REGISTRY. Modules are
imported on first use only: a trial process imports its own experiment and nothing else
(tests/test_import_weight.py). An experiment module imports its science stack (torch, scikit-learn,
matplotlib, pandas, scipy) lazily (fer_ray/core/lazy_import.py), so that validating a sweep file,
which imports the experiment for its settings model, takes milliseconds and never loads torch
(tests/test_experiment_contract.py checks every registered module). Experiments use the science core
and never import ray, mlflow or the orchestrator: the orchestrator hands them a Reporter and, for
their report, a TrialTable (fer_ray.experiments.results).
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

from fer_ray.experiments.contract import Experiment

#: experiment kind -> the module holding its ``EXPERIMENT``. The one table of experiments.
REGISTRY: dict[str, str] = {
    "finetune": "fer_ray.experiments.finetune",
    "svm": "fer_ray.experiments.svm",
    "evaluate": "fer_ray.experiments.evaluate",
    "probe": "fer_ray.experiments.probe",
    "noise": "fer_ray.experiments.noise",
    "fgsm": "fer_ray.experiments.fgsm",
    "tsne": "fer_ray.experiments.tsne",
    "saliency": "fer_ray.experiments.saliency",
    "bias": "fer_ray.experiments.bias",
    "transfer": "fer_ray.experiments.transfer",
}


def experiment_names() -> list[str]:
    return sorted(REGISTRY)


def settings_model(name: str) -> type[BaseModel]:
    """The settings model of experiment ``name`` (KeyError for an unknown kind)."""
    return get_experiment(name).settings


def evaluates_model(name: str) -> bool:
    """Whether experiment ``name`` evaluates a trained model (KeyError for an unknown kind)."""
    return get_experiment(name).evaluates_model


def get_experiment(name: str) -> Experiment:
    """The Experiment of kind ``name`` (imports its module). KeyError for an unknown kind; TypeError
    when the module does not describe itself as the contract asks."""
    module = importlib.import_module(REGISTRY[name])
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment) or experiment.name != name:
        raise TypeError(f"{REGISTRY[name]} must define EXPERIMENT = Experiment(name={name!r}, ...)")
    return experiment
