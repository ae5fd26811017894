"""One SVM trial: score one grid point by subject-disjoint k-fold CV, refit it and score it on the
test split beside the untuned SVM and the CNN (see the package docstring)."""

from __future__ import annotations

import json
from pathlib import Path

from fer_ray.core.data.prepare import PreparedData, prepare_data
from fer_ray.core.device import pick_device
from fer_ray.core.evaluate import evaluate_model
from fer_ray.core.files import file_sha256, node_cached_json
from fer_ray.core.model_file import load_model
from fer_ray.core.svm import cv_score_point, fit_and_test, untuned_baseline
from fer_ray.experiments.base import Reporter, Trial
from fer_ray.experiments.svm.design import cv_design
from fer_ray.experiments.svm.features import (
    _cache_file,
    _feature_key,
    dataset_features,
    describe_features,
)
from fer_ray.experiments.svm.settings import Settings, SvmConfigError

#: tags carrying the test confusion matrices (JSON lists of lists, rows = true class) to the report
TAG_CONFUSION = "fer_ray.svm_test_confusion"
TAG_UNTUNED_CONFUSION = "fer_ray.svm_untuned_test_confusion"
TAG_CLASSES = "fer_ray.svm_classes"  # JSON list: the class names of the confusion matrices' rows
TAG_FEATURES = "fer_ray.svm_features"


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Score one grid point by subject-disjoint k-fold CV; refit it and score it on the test split.

    Returns cv_acc_mean, cv_acc_std, cv_acc_split<i> (accuracies in [0,1]), cv_fit_time_s (mean s
    per fold fit), test_acc / test_macro_f1 (this point refit on the training pool), the untuned SVM's
    untuned_test_acc / untuned_test_macro_f1, the CNN's cnn_test_acc / cnn_test_macro_f1 (same test
    split), n_pool, n_test, n_features.
    """
    cfg: Settings = trial.settings
    if trial.model_file is None:
        raise SvmConfigError("the svm experiment compares against a CNN: trial.model_file (source.model) is required")
    if cfg.features == "pixels" and cfg.pixel_size > trial.data.image_size:
        raise SvmConfigError(
            f"settings.pixel_size={cfg.pixel_size} is larger than data.image_size={trial.data.image_size}: "
            "pixel features would be upsampled; lower settings.pixel_size or raise data.image_size"
        )
    data = prepare_data(trial.data)
    design = cv_design(data, cfg)
    labels, classes = data.dataset.labels, list(data.dataset.classes)
    model_sha = file_sha256(trial.model_file)
    features = dataset_features(data, trial.data, cfg, trial.model_file, model_sha)
    pool_x, pool_y = features[design.pool_rows], labels[design.pool_rows]
    test_x, test_y = features[design.test_rows], labels[design.test_rows]

    cv = cv_score_point(pool_x, pool_y, design.folds, cfg.point(), cfg.pca_components, cfg.seed)
    tuned = fit_and_test(pool_x, pool_y, test_x, test_y, cfg.point(), cfg.pca_components, classes, cfg.seed)
    # the same for every point of the sweep: computed by the first trial on the node, read by the rest
    untuned_key = {"features": _feature_key(data, cfg, model_sha), "rows": design.rows_key(), "pca": cfg.pca_components, "seed": cfg.seed}
    untuned = node_cached_json(
        _cache_file(trial.data, "untuned", untuned_key),
        lambda: _scores(untuned_baseline(pool_x, pool_y, test_x, test_y, cfg.pca_components, classes, cfg.seed)),
    )
    cnn_key = {"model_sha256": model_sha, "fingerprint": data.fingerprint, "test_rows": design.test_key()}
    cnn = node_cached_json(_cache_file(trial.data, "cnn", cnn_key), lambda: _cnn_scores(trial.model_file, data))
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            TAG_FEATURES: describe_features(cfg, features.shape[1]),
            TAG_CONFUSION: json.dumps(tuned["confusion"]),
            TAG_UNTUNED_CONFUSION: json.dumps(untuned["confusion"]),
            TAG_CLASSES: json.dumps(classes),
        }
    )
    metrics = {
        "cv_acc_mean": cv["mean_test_score"],
        "cv_acc_std": cv["std_test_score"],
        **{f"cv_acc_split{i}": cv[f"split{i}_test_score"] for i in range(len(design.folds))},
        "cv_fit_time_s": cv["mean_fit_time"],
        "test_acc": tuned["accuracy"],
        "test_macro_f1": tuned["macro_f1"],
        "untuned_test_acc": untuned["accuracy"],
        "untuned_test_macro_f1": untuned["macro_f1"],
        "cnn_test_acc": cnn["accuracy"],
        "cnn_test_macro_f1": cnn["macro_f1"],
        "n_pool": len(design.pool_rows),
        "n_test": len(design.test_rows),
        "n_features": features.shape[1],
    }
    return {name: float(value) for name, value in metrics.items()}


def _scores(result: dict) -> dict:
    """The JSON-able part of a classification result: accuracy, macro-F1, confusion."""
    return {"accuracy": float(result["accuracy"]), "macro_f1": float(result["macro_f1"]), "confusion": result["confusion"]}


def _cnn_scores(model_file: Path, data: PreparedData) -> dict:
    """The CNN's accuracy, macro-F1 and confusion on the test split (as the fine-tuning trial scores it)."""
    model, _ = load_model(model_file)
    return _scores(evaluate_model(model.to(pick_device()), data.test, data.dataset))
