"""Evaluate a trained model on the test split of a dataset: the plainest evaluation experiment.

Useful on its own (score a KDEF-trained model on RADIATE, or on another split seed) and the smallest
example of an evaluation experiment: ``evaluates_model=True`` makes the orchestrator resolve or train
the model first and hand its file to ``run`` as ``trial.model_file``.
"""

from __future__ import annotations

from pydantic import Field

from fer_ray.core.config import Strict
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.finetune import final_metrics

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
evaluate = lazy_module("fer_ray.core.evaluate")
models = lazy_module("fer_ray.core.models")
plots = lazy_module("fer_ray.core.plots")


class Settings(Strict):
    confusion_matrix: bool = Field(True, description="log the test confusion matrix PNG")


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Clean test metrics of ``trial.model_file`` on ``trial.data``'s test split."""
    model, data = load_model_and_data(trial)
    classes = data.dataset.classes
    reporter.tags({"fer_ray.dataset_fingerprint": data.fingerprint, "fer_ray.protocol": data.protocol})
    evaluation = evaluate.evaluate_model(model, data.test, data.dataset)
    if trial.settings.confusion_matrix:
        reporter.figure(plots.confusion_matrix_figure(evaluation["confusion"], classes, title="test confusion"), "confusion_matrix.png")
    metrics = final_metrics(evaluation, best_val_acc=float("nan"), epochs_run=0, n_params=models.count_parameters(model)["total"])
    return {k: v for k, v in metrics.items() if k not in ("best_val_acc", "epochs_run")}


EXPERIMENT = Experiment(name="evaluate", settings=Settings, evaluates_model=True, run=run, summary_metrics=("test_acc", "test_macro_f1"))
