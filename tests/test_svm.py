"""SVM baseline pieces: per-point CV equals sklearn GridSearchCV exactly; folds are subject-disjoint
and stratified; pixel features match PIL; test-set scoring matches a hand-built sklearn pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import make_classification
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from fer_ray.core.config import ModelConfig
from fer_ray.core.data.kdef import read_kdef
from fer_ray.core.data.records import DataError
from fer_ray.core.models import build_model
from fer_ray.core.svm import (
    best_point,
    cv_score_point,
    fit_and_test,
    model_features,
    param_grid,
    pipeline_params,
    pixel_features,
    rank_test_scores,
    subject_folds,
    svm_pipeline,
    untuned_baseline,
)

N_SUBJECTS = 20


@pytest.fixture(scope="module")
def problem():
    """240 rows of 3-class features, 12 rows per subject (subjects own rows of every class)."""
    features, labels = make_classification(n_samples=240, n_features=16, n_informative=6, n_classes=3, class_sep=0.8, random_state=0)
    subjects = np.array([f"P{i % N_SUBJECTS:02d}" for i in range(len(labels))], dtype=object)
    return features.astype(np.float32), labels, subjects


@pytest.mark.parametrize("pca_components", [None, 5])
def test_every_grid_point_equals_grid_search_cv(problem, pca_components):
    features, labels, subjects = problem
    folds = subject_folds(labels, subjects, n_splits=5, seed=0)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": ["scale", "auto", 0.01], "kernel": ["rbf", "linear", "poly"]}

    points = param_grid(**grid)
    results = [cv_score_point(features, labels, folds, p, pca_components=pca_components) for p in points]
    search = GridSearchCV(
        svm_pipeline(pca_components=pca_components),
        pipeline_params(grid),
        cv=folds,
        scoring="accuracy",
        refit=False,
    ).fit(features, labels)
    reference = search.cv_results_

    assert [pipeline_params(p) for p in points] == reference["params"]
    for i, result in enumerate(results):
        assert result["params"] == points[i]
        assert result["mean_test_score"] == reference["mean_test_score"][i]
        assert result["std_test_score"] == reference["std_test_score"][i]
        for split in range(len(folds)):
            assert result[f"split{split}_test_score"] == reference[f"split{split}_test_score"][i]
        assert result["mean_fit_time"] > 0
    np.testing.assert_array_equal(rank_test_scores(results), reference["rank_test_score"])
    assert pipeline_params(best_point(results)["params"]) == search.best_params_
    # linear ignores gamma: its points tie, and the scores are not all equal (the pick means something)
    assert len({r["mean_test_score"] for r in results}) > 3


def test_ties_go_to_the_first_point_in_grid_order_as_grid_search_cv(problem):
    features, labels, subjects = problem
    folds = subject_folds(labels, subjects, n_splits=5, seed=1)
    grid = {"C": [1.0], "gamma": [0.5, "scale", "auto"], "kernel": ["linear"]}

    results = [cv_score_point(features, labels, folds, p) for p in param_grid(**grid)]
    search = GridSearchCV(svm_pipeline(), pipeline_params(grid), cv=folds, scoring="accuracy", refit=False)
    search.fit(features, labels)

    assert len({r["mean_test_score"] for r in results}) == 1  # a three-way tie
    assert pipeline_params(best_point(results)["params"]) == search.best_params_
    assert best_point(results)["params"]["gamma"] == 0.5
    failed = dict(results[0], mean_test_score=float("nan"))
    assert best_point([failed, results[1]]) is results[1]  # a failed point ranks below every other


def test_param_grid_follows_parameter_grid_order_with_one_point_per_gamma_for_linear():
    points = param_grid(C=[0.1, 1, 10, 100, 1000], gamma=["scale", "auto", 0.001, 0.01], kernel=["rbf", "linear", "poly"])

    assert len(points) == 5 * 4 * 3
    assert points[0] == {"C": 0.1, "gamma": "scale", "kernel": "rbf"}
    assert points[1] == {"C": 0.1, "gamma": "scale", "kernel": "linear"}
    assert points[3] == {"C": 0.1, "gamma": "auto", "kernel": "rbf"}
    assert sum(p["kernel"] == "linear" for p in points) == 5 * 4


def test_folds_keep_each_person_on_one_side_and_every_class_in_every_val_fold(synthetic_root):
    dataset = read_kdef(synthetic_root)
    labels, people = dataset.labels, dataset.identities

    folds = subject_folds(labels, people, n_splits=10, seed=3)

    assert len(folds) == 10
    seen = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(dataset)))  # every row validated once
    for train, val in folds:
        assert not set(people[train]) & set(people[val])
        assert len(train) + len(val) == len(dataset)
        assert set(labels[val]) == set(range(len(dataset.classes)))
    other_seed = subject_folds(labels, people, n_splits=10, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other_seed))


def test_fewer_subjects_than_folds_names_both_counts(problem):
    features, labels, subjects = problem

    with pytest.raises(DataError, match=rf"{N_SUBJECTS} subjects cannot fill n_splits=25"):
        subject_folds(labels, subjects, n_splits=25)
    with pytest.raises(ValueError):  # DataError is a ValueError
        subject_folds(labels, subjects[:-1], n_splits=5)


def test_pixel_features_are_pil_grayscale_resized(synthetic_root):
    path = next(synthetic_root.glob("*/*.JPG"))
    picture = Image.open(path).convert("RGB")  # 64 x 88 px
    image = torch.from_numpy(np.array(picture)).permute(2, 0, 1).unsqueeze(0)
    batch = torch.cat([image, 255 - image])

    features = pixel_features(batch, size=24)

    assert features.dtype == np.float32 and features.shape == (2, 24 * 24)
    assert features.min() >= 0.0 and features.max() <= 1.0 and features.std() > 0.05
    expected = np.asarray(picture.convert("L").resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(features[0].reshape(24, 24), expected, atol=2.5 / 255)
    np.testing.assert_allclose(features[1], 1.0 - features[0], atol=1e-5)  # rows are independent images


def test_model_features_are_the_backbone_output_in_eval_mode():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18", weights="none"), num_classes=7).train()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)

    features = model_features(model, images, batch_size=2)

    assert features.shape == (5, model.feature_dim) and features.dtype == np.float32
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = model.features(images.float() / 255).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_fit_and_test_and_untuned_baseline_match_hand_built_sklearn_pipelines(problem):
    features, labels, _ = problem
    train, test = np.arange(0, 180), np.arange(180, 240)
    params = {"C": 10.0, "gamma": 0.01, "kernel": "rbf"}
    classes = ["a", "b", "c"]

    tuned = fit_and_test(features[train], labels[train], features[test], labels[test], params, classes=classes)
    untuned = untuned_baseline(features[train], labels[train], features[test], labels[test], classes=classes)

    for result, svc in ((tuned, SVC(C=10.0, gamma=0.01, kernel="rbf")), (untuned, SVC())):
        predicted = make_pipeline(StandardScaler(), svc).fit(features[train], labels[train]).predict(features[test])
        assert result["accuracy"] == accuracy_score(labels[test], predicted)
        assert result["macro_f1"] == f1_score(labels[test], predicted, average="macro")
        assert result["confusion"] == confusion_matrix(labels[test], predicted, labels=[0, 1, 2]).tolist()
        assert result["n"] == len(test) and result["accuracy"] > 0.5  # above 1/3 chance
    assert untuned["params"] == {"C": 1.0, "gamma": "scale", "kernel": "rbf"}
