"""The reference study's SVM baseline as Ray Tune trials: one trial = one (C, gamma, kernel) grid point.

One trial:
  1. features of every image of the dataset: grayscale pixels resized to ``settings.pixel_size``
     (the reference study's), or the penultimate features of the CNN named by ``source:`` -- computed once per
     node and cached on its disk (core.files.node_cached);
  2. ``settings.folds`` subject-disjoint, class-stratified folds (StratifiedGroupKFold by identity) over
     the training (+ validation) side, never touching the test identities;
  3. the point's cross-validated accuracy: exactly its row of sklearn GridSearchCV's cv_results_
     (scaling / PCA fitted inside each fold: core.svm.cv_score_point);
  4. the point refit on the whole training pool and scored on the test split (``test_acc``), and on
     the same test split the untuned SVM (sklearn's defaults) and the CNN itself (``cnn_test_acc``),
     both cached per node since every trial of a sweep would compute the same numbers.

The report (report.report, run by the driver) picks the best point by mean CV accuracy with
GridSearchCV's rule (ties go to the first point in grid order), so the tuned SVM's test accuracy is
read from that trial's MLflow run -- chosen by cross-validation alone -- and draws the CV heatmap and
the CNN vs tuned SVM vs untuned SVM bars. Each trial refits its own point (one fit beside its k fold
fits) rather than the report refitting the winner: the report then needs neither the data nor the
model file (a ``runs:/`` source cannot be fetched without MLflow, which experiments never import), and
its numbers are exactly those in MLflow.

Modules: settings (the Settings model), design (pool, folds, test rows), features (the per-node
feature cache), trial (run), report (the sweep report).
"""

from __future__ import annotations

from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable
from fer_ray.experiments.svm.settings import Settings

# scikit-learn and torch, imported on first use (fer_ray/core/lazy_import.py)
svm_trial = lazy_module("fer_ray.experiments.svm.trial")
svm_report = lazy_module("fer_ray.experiments.svm.report")


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """One grid point: trial.run."""
    return svm_trial.run(trial, reporter)


def sweep_report(table: TrialTable) -> Report:
    """The sweep's report: report.report (a function of its own name: ``report`` is the submodule)."""
    return svm_report.report(table)


EXPERIMENT = Experiment(
    name="svm",
    settings=Settings,
    evaluates_model=True,
    run=run,
    report=sweep_report,
    summary_metrics=("cv_acc_mean", "test_acc", "cnn_test_acc"),
)
