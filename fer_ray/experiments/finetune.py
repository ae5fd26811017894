"""Fine-tuning: a ResNet with a new dense head on a face dataset, evaluated on the held-out test set.

Used by the quickstart, dataset-fraction, model-size and Optuna sweeps (they differ only in what the
sweep varies). Per epoch: train_loss, train_acc, val_loss, val_acc (and a checkpoint). At the end:
test_acc, test_macro_f1, per-class recall, per-group accuracy, the confusion matrix figure and the
trained model file (logged by the orchestrator as the MLflow Model ``runs:/<run id>/model``, usable by later sweeps).
"""

from __future__ import annotations

import json

from pydantic import Field

from fer_ray.core.artifacts import MODEL_ARTIFACT_DIR, MODEL_FILE
from fer_ray.core.config import Strict
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
torch = lazy_module("torch")
prepare = lazy_module("fer_ray.core.data.prepare")
evaluate = lazy_module("fer_ray.core.evaluate")
group_stats = lazy_module("fer_ray.core.group_stats")
model_file = lazy_module("fer_ray.core.model_file")
models = lazy_module("fer_ray.core.models")
plots = lazy_module("fer_ray.core.plots")
train = lazy_module("fer_ray.core.train")
finetune_report = lazy_module("fer_ray.experiments.finetune_report")


class Settings(Strict):
    """What the fine-tuning trial produces besides its metrics."""

    confusion_matrix: bool = Field(True, description="log the test confusion matrix PNG")
    save_model: bool = Field(True, description="log the trained model file (needed by evaluation sweeps)")


#: the artifact with a trial's test confusion counts, summed over seeds by the report: JSON
#: {"classes": [C names], "counts": C x C ints, rows = true class}
CONFUSION_DIR, CONFUSION_FILE = "test_confusion", "counts.json"
CONFUSION_ARTIFACT = f"{CONFUSION_DIR}/{CONFUSION_FILE}"
#: the per-epoch metric of the report's learning curves
CURVE_METRIC = "val_acc"


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Train on the trial's data/model/train config; returns the final (test) metrics."""
    data = prepare.prepare_data(trial.data)
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            "fer_ray.n_train": str(len(data.train)),
            "fer_ray.n_val": str(len(data.val)),
            "fer_ray.n_test": str(len(data.test)),
        }
    )
    torch.manual_seed(trial.train.seed)  # the new head's (and a random backbone's) initial weights
    model = models.build_model(trial.model, num_classes=len(data.dataset.classes))
    checkpoint_path = reporter.work_dir / "checkpoint.pt"
    result = train.fit(
        model,
        data.train,
        data.val,
        trial.train,
        on_epoch=lambda epoch, checkpoint: reporter.epoch(epoch_metrics(epoch), epoch.epoch, checkpoint),
        checkpoint_path=checkpoint_path,
        resume_from=reporter.resume_checkpoint(),
        model_config=trial.model.model_dump(mode="json"),
        checkpoint_every=reporter.checkpoint_every,
    )
    evaluation = evaluate.evaluate_model(model, data.test, data.dataset)
    if trial.settings.confusion_matrix:
        figure = plots.confusion_matrix_figure(evaluation["confusion"], data.dataset.classes, title=f"{trial.sweep}: test confusion")
        reporter.figure(figure, "confusion_matrix.png")
    confusion_path = reporter.work_dir / CONFUSION_FILE  # the counts, summed over seeds by the report
    confusion_path.write_text(
        json.dumps({"classes": list(data.dataset.classes), "counts": [list(map(int, row)) for row in evaluation["confusion"]]})
    )
    reporter.artifact(confusion_path, CONFUSION_DIR)
    if trial.settings.save_model:
        model_path = reporter.work_dir / MODEL_FILE
        model_file.save_model(model_path, model, trial.model, data.dataset.classes)
        reporter.artifact(model_path, MODEL_ARTIFACT_DIR)
    metrics = final_metrics(evaluation, result.best_val_acc, result.epochs_run, models.count_parameters(model)["total"])
    metrics["n_train_people"] = float(len(set(data.dataset.identities[data.train.indices].tolist())))
    return metrics | accuracy_interval_metrics(evaluation, data)


def accuracy_interval_metrics(evaluation: dict, data) -> dict[str, float]:
    """``test_acc/ci_low``, ``test_acc/ci_high``: 95 % CI of this run's test accuracy over test PEOPLE
    (subject-clustered bootstrap, fer_ray.core.group_stats.accuracy_ci), so a one-seed result carries an
    uncertainty too. It does not cover seed-to-seed variation."""
    correct = (evaluation["probs"].argmax(dim=1) == data.test.labels).numpy()
    low, high = group_stats.accuracy_ci(correct, data.dataset.identities[data.test.indices])
    return {"test_acc/ci_low": low, "test_acc/ci_high": high}


def epoch_metrics(epoch) -> dict[str, float]:
    """The per-epoch numbers every training sweep reports (same names across experiments)."""
    return {
        "train_loss": epoch.train_loss,
        "train_acc": epoch.train_acc,
        "val_loss": epoch.val_loss,
        "val_acc": epoch.val_acc,
        "sched_lr": epoch.lr,  # not "lr": that reads as the param train.lr (the starting rate)
        "images_per_s": epoch.images_per_s,
    }


def final_metrics(evaluation: dict, best_val_acc: float, epochs_run: int, n_params: int) -> dict[str, float]:
    """test_acc, test_macro_f1, test_recall/<class>, test_acc/<attribute>/<value>, plus training facts."""
    metrics = {
        "test_acc": float(evaluation["accuracy"]),
        "test_macro_f1": float(evaluation["macro_f1"]),
        "best_val_acc": float(best_val_acc),
        "epochs_run": float(epochs_run),
        "n_params": float(n_params),
    }
    metrics.update({f"test_recall/{name}": float(r) for name, r in evaluation["per_class_recall"].items()})
    for attribute in ("angle", "gender", "race"):
        for value, group in evaluation.get(f"per_{attribute}", {}).items():
            metrics[f"test_acc/{attribute}/{value}"] = float(group["acc"])
    return metrics


def report(table: TrialTable) -> Report:
    """The sweep's report: fer_ray.experiments.finetune_report.report (tables, curves, confusion)."""
    return finetune_report.report(table)


EXPERIMENT = Experiment(
    name="finetune",
    settings=Settings,
    evaluates_model=False,
    run=run,
    report=report,
    report_artifacts=(CONFUSION_ARTIFACT,),
    history_metrics=(CURVE_METRIC,),
    epochs=lambda trial: trial.train.epochs,
)
