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

from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.svm import report, trial
from fer_ray.experiments.svm.settings import Settings

EXPERIMENT = Experiment(
    name="svm",
    settings=Settings,
    evaluates_model=True,
    run=trial.run,
    report=report.report,
    summary_metrics=("cv_acc_mean", "test_acc", "cnn_test_acc"),
)
