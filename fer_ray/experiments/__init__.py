"""One module per ``experiment:`` kind of a sweep file.

Each module exposes ``EvalConfig`` (pydantic model of its ``eval:`` section) and
``run(trial: Trial, reporter: Reporter) -> dict[str, float]`` (see base.py). A module that evaluates
a trained model sets ``EVALUATES_MODEL = True``: the orchestrator then resolves (or trains) the model
first and hands the trial its file as ``trial.model_file``. A module may also expose
``report(runs: pandas.DataFrame, spec) -> (markdown: str, figures: dict[name, Figure])`` for the
sweep's report, optionally with a third element, a dict of sweep-level metrics for the parent run; a
hook that reads files the trials logged declares a keyword ``fetch`` (base.Fetch) and gets a function
that downloads a run's artifact from any artifact store (local folder, server, S3). Experiments use the
science core and never import ray or mlflow: the orchestrator hands them a Reporter.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pydantic import BaseModel

#: experiment kind -> module. A new experiment is one module here plus one YAML in sweeps/.
_MODULES: dict[str, str] = {
    "finetune": "fer_ray.experiments.finetune",
    "svm": "fer_ray.experiments.svm",
    "evaluate": "fer_ray.experiments.evaluate",
    "probe": "fer_ray.experiments.probe",
    "noise": "fer_ray.experiments.noise",
    "fgsm": "fer_ray.experiments.fgsm",
    "tsne": "fer_ray.experiments.tsne",
    "saliency": "fer_ray.experiments.saliency",
    "bias": "fer_ray.experiments.bias",
}


def experiment_names() -> list[str]:
    return sorted(_MODULES)


def load_experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (KeyError for an unknown kind)."""
    return importlib.import_module(_MODULES[name])


def eval_config_model(name: str) -> type[BaseModel]:
    """The pydantic model of experiment ``name``'s ``eval:`` section."""
    return load_experiment(name).EvalConfig


def evaluates_model(name: str) -> bool:
    """Whether experiment ``name`` evaluates a trained model (and so needs a model source)."""
    return bool(getattr(load_experiment(name), "EVALUATES_MODEL", False)) if name in _MODULES else False
