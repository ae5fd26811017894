"""One module per ``experiment:`` kind of a sweep file, each describing itself with one typed
:class:`~fer_ray.experiments.contract.Experiment` (its settings model, trial function, report
function, the artifacts its report reads), registered in :data:`REGISTRY`.

A new experiment is one module here (ending in ``EXPERIMENT = Experiment(...)``), one YAML file in
sweeps/ and one line in REGISTRY. Modules are imported on first use only: a trial process imports
its own experiment and nothing else (tests/test_import_weight.py). Experiments use the science core
and never import ray, mlflow or the orchestrator: the orchestrator hands them a Reporter and, for
their report, a TrialTable (fer_ray.experiments.results).
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.settings import EVALUATES_MODEL, SETTINGS

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
    """The settings model of experiment ``name`` (KeyError for an unknown kind), without importing the
    experiment's module (experiments/settings.py)."""
    return SETTINGS[name]


def evaluates_model(name: str) -> bool:
    """Whether experiment ``name`` evaluates a trained model, without importing its module."""
    return name in EVALUATES_MODEL


def get_experiment(name: str) -> Experiment:
    """The Experiment of kind ``name`` (imports its module). KeyError for an unknown kind; TypeError
    when the module does not describe itself as the contract asks."""
    module = importlib.import_module(REGISTRY[name])
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment) or experiment.name != name:
        raise TypeError(f"{REGISTRY[name]} must define EXPERIMENT = Experiment(name={name!r}, ...)")
    if experiment.settings is not SETTINGS[name] or experiment.evaluates_model != evaluates_model(name):
        raise TypeError(f"{REGISTRY[name]}: EXPERIMENT's settings and evaluates_model must be those of experiments/settings.py")
    return experiment
