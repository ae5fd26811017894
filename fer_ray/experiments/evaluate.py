"""Evaluate a trained model on the test split of a dataset: the plainest evaluation experiment.

Useful on its own (score a KDEF-trained model on RADIATE, or on another split seed) and the smallest
example of an evaluation experiment: ``evaluates_model=True`` makes the orchestrator resolve or train
the model first and hand its file to ``run`` as ``trial.model_file``.
"""

from __future__ import annotations

from fer_ray.core.evaluate import evaluate_model
from fer_ray.core.models import count_parameters
from fer_ray.core.plots import confusion_matrix_figure
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.finetune import final_metrics
from fer_ray.experiments.settings import EvaluateSettings as Settings


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Clean test metrics of ``trial.model_file`` on ``trial.data``'s test split."""
    model, data = load_model_and_data(trial)
    classes = data.dataset.classes
    reporter.tags({"fer_ray.dataset_fingerprint": data.fingerprint, "fer_ray.protocol": data.protocol})
    evaluation = evaluate_model(model, data.test, data.dataset)
    if trial.settings.confusion_matrix:
        reporter.figure(confusion_matrix_figure(evaluation["confusion"], classes, title="test confusion"), "confusion_matrix.png")
    metrics = final_metrics(evaluation, best_val_acc=float("nan"), epochs_run=0, n_params=count_parameters(model)["total"])
    return {k: v for k, v in metrics.items() if k not in ("best_val_acc", "epochs_run")}


EXPERIMENT = Experiment(name="evaluate", settings=Settings, evaluates_model=True, run=run, summary_metrics=("test_acc", "test_macro_f1"))
