"""SVM grid search: fer_ray's one-task-per-grid-point on Ray vs sklearn GridSearchCV(n_jobs=2).

The reference study's grid (C in 0.1..1000, gamma in scale/auto/0.001/0.01, kernel rbf/linear/poly: 60 points)
with 10 subject-disjoint folds over pixel features (grayscale, resized, flattened) of the synthetic
faces' training side. Both paths get the same features and the same folds:

  fer_ray   ray.init(num_cpus=2); the features, labels and folds are ray.put once; one @ray.remote
            task per grid point calls fer_ray.core.svm.cv_score_point (its 10 folds, in order) --
            what one Ray Tune trial of the SVM experiment does. Timed from the first ray.put to the
            last result (ray.init is printed apart: a sweep starts Ray once for all its trials);
  sklearn   GridSearchCV(svm_pipeline(), grid, cv=folds, scoring="accuracy", n_jobs=2, refit=False),
            timed over fit() (which includes starting its loky worker processes).

The script asserts that every point's mean, std and per-fold accuracies are identical and that the
best parameters agree, prints the tuned and untuned SVM on the test side, and ends with the ratio.

    python benchmarks/svm_grid.py --identities 20 --feature-size 24
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from sklearn.model_selection import GridSearchCV

from fer_ray.core.config import DataConfig, SyntheticConfig
from fer_ray.core.data.prepare import prepare_data
from fer_ray.core.svm import (
    best_point,
    cv_score_point,
    fit_and_test,
    param_grid,
    pipeline_params,
    pixel_features,
    subject_folds,
    svm_pipeline,
    untuned_baseline,
)

#: The reference study's grid.
SEED_GRID = {"C": [0.1, 1, 10, 100, 1000], "gamma": ["scale", "auto", 0.001, 0.01], "kernel": ["rbf", "linear", "poly"]}


@ray.remote(num_cpus=1)
def score_point(features, labels, folds, params):
    """One grid point's 10-fold CV (top-level ObjectRef arguments arrive as their values)."""
    return cv_score_point(features, labels, folds, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=20, help="synthetic people per gender")
    parser.add_argument("--image-size", type=int, default=64, help="cached tensor side in px")
    parser.add_argument("--feature-size", type=int, default=24, help="pixel-feature side in px")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fer_ray_svm_bench_") as scratch:
        started = time.perf_counter()
        cfg = DataConfig(
            dataset="synthetic",
            image_size=args.image_size,
            cache_dir=Path(scratch),
            synthetic=SyntheticConfig(identities=args.identities, width=112, height=152),
        )
        prepared = prepare_data(cfg)
        print(
            f"synthetic faces: {len(prepared.dataset)} images, {args.image_size}px tensors "
            f"({time.perf_counter() - started:.1f} s to draw and decode)"
        )

    people = prepared.dataset.identities
    features = pixel_features(prepared.train.images, args.feature_size)
    labels = prepared.train.labels.numpy()
    test_features = pixel_features(prepared.test.images, args.feature_size)
    test_labels = prepared.test.labels.numpy()
    folds = subject_folds(labels, people[prepared.train.indices], n_splits=args.folds, seed=0)
    points = param_grid(**SEED_GRID)
    print(
        f"train side: {features.shape[0]} images x {features.shape[1]} features, "
        f"{len(set(people[prepared.train.indices]))} people; {len(points)} grid points x {len(folds)} folds "
        f"= {len(points) * len(folds)} SVC fits per path; test side: {len(test_labels)} images"
    )

    search = GridSearchCV(svm_pipeline(), pipeline_params(SEED_GRID), cv=folds, scoring="accuracy", n_jobs=args.cpus, refit=False)
    started = time.perf_counter()
    search.fit(features, labels)
    sklearn_s = time.perf_counter() - started
    print(f"sklearn  GridSearchCV(n_jobs={args.cpus}): {sklearn_s:.2f} s")

    started = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        refs = [ray.put(features), ray.put(labels), ray.put(folds)]
        results = ray.get([score_point.remote(*refs, params) for params in points])
        fer_ray_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    print(f"fer_ray  {len(points)} Ray tasks on {args.cpus} CPUs: {fer_ray_s:.2f} s (ray.init apart: {init_s:.2f} s)")

    check_identical(results, search.cv_results_, len(folds))
    best = best_point(results)
    assert pipeline_params(best["params"]) == search.best_params_, (best["params"], search.best_params_)
    print(
        f"identical CV scores at all {len(points)} points; best {best['params']} "
        f"mean CV acc {best['mean_test_score']:.4f} +- {best['std_test_score']:.4f}"
    )

    classes = list(prepared.dataset.classes)
    tuned = fit_and_test(features, labels, test_features, test_labels, best["params"], classes=classes)
    untuned = untuned_baseline(features, labels, test_features, test_labels, classes=classes)
    for name, result in (("tuned", tuned), ("untuned", untuned)):
        print(f"test ({name} SVM {result['params']}): acc {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")

    print(f"ratio sklearn/fer_ray time: {sklearn_s / fer_ray_s:.2f}x (>1: fer_ray faster)")


def check_identical(results: list[dict], reference: dict, n_folds: int) -> None:
    """Every point's mean, std and per-fold accuracy equal GridSearchCV's cv_results_ exactly."""
    assert [pipeline_params(r["params"]) for r in results] == reference["params"]
    keys = ["mean_test_score", "std_test_score"] + [f"split{i}_test_score" for i in range(n_folds)]
    for i, result in enumerate(results):
        for key in keys:
            ours, theirs = result[key], reference[key][i]
            assert ours == theirs or (np.isnan(ours) and np.isnan(theirs)), (result["params"], key, ours, theirs)


if __name__ == "__main__":
    main()
