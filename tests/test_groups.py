"""Per-group rates, accuracy gaps, subject-level bootstrap CIs and permutation tests."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from fer_ray.core.groups import (
    GroupStatsError,
    cluster_bootstrap_ci,
    gap_summary,
    group_rates,
    permutation_test_acc_diff,
)

CLASSES = ["angry", "happy", "sad"]


def constructed_study(accuracy_pattern_a, accuracy_pattern_b, subjects_per_group=20, images_per_subject=10):
    """Two groups of subjects; subject i of a group gets pattern[i % len(pattern)] of its images right.

    Returns y_true, y_pred, groups, subjects (arrays of N = 2 x subjects x images) and correct.
    """
    y_true, y_pred, groups, subjects = [], [], [], []
    for group, pattern in (("A", accuracy_pattern_a), ("B", accuracy_pattern_b)):
        for index in range(subjects_per_group):
            right = round(pattern[index % len(pattern)] * images_per_subject)
            labels = np.arange(images_per_subject) % len(CLASSES)
            predicted = np.where(np.arange(images_per_subject) < right, labels, (labels + 1) % len(CLASSES))
            y_true += labels.tolist()
            y_pred += predicted.tolist()
            groups += [group] * images_per_subject
            subjects += [f"{group}{index:02d}"] * images_per_subject
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    return y_true, y_pred, np.array(groups), np.array(subjects), y_true == y_pred


def test_cluster_bootstrap_ci_of_a_known_gap_covers_it_and_excludes_zero():
    # 40 subjects x 10 images; A: subjects at 0.8 / 1.0 (mean 0.9), B: 0.5 / 0.7 (mean 0.6).
    y_true, y_pred, groups, subjects, _ = constructed_study([0.8, 1.0], [0.5, 0.7])
    result = cluster_bootstrap_ci(y_true, y_pred, groups, subjects, statistic="acc_gap", n_boot=1000, seed=0)
    assert result["estimate"] == pytest.approx(0.3)
    assert result["low"] < 0.3 < result["high"]
    assert result["low"] > 0
    assert result["high"] - result["low"] < 0.2

    single = cluster_bootstrap_ci(y_true, y_pred, groups, subjects, statistic="acc", group="B", n_boot=500)
    assert single["estimate"] == pytest.approx(0.6) and single["low"] < 0.6 < single["high"]


def test_cluster_bootstrap_resamples_subjects_not_images():
    # 20 subjects x 10 images, 18 subjects always right, 2 always wrong: accuracy 0.9 either way,
    # but images of one subject move together, so the subject-level interval is much wider.
    correct_subjects = [1.0] * 9 + [0.0]
    y_true, y_pred, groups, subjects, _ = constructed_study(correct_subjects, correct_subjects)
    keep = groups == "A"
    clustered = cluster_bootstrap_ci(
        y_true[keep], y_pred[keep], groups[keep], subjects[keep], statistic="acc", group="A"
    )
    per_image = cluster_bootstrap_ci(
        y_true[keep], y_pred[keep], groups[keep], np.arange(keep.sum()), statistic="acc", group="A"
    )
    assert clustered["estimate"] == per_image["estimate"] == pytest.approx(0.9)
    assert clustered["high"] - clustered["low"] > 2 * (per_image["high"] - per_image["low"])


def test_permutation_test_small_p_for_a_real_gap_and_large_without_one():
    _, _, groups, subjects, correct = constructed_study([0.8, 1.0], [0.5, 0.7])
    result = permutation_test_acc_diff(correct, groups, subjects, n_perm=2000, seed=0)
    assert result["groups"] == ["A", "B"]
    assert result["diff"] == pytest.approx(0.3)
    assert result["p_value"] < 0.01

    # Both groups' subjects spread around one accuracy (A: 0.70, B: 0.675 by construction).
    _, _, groups, subjects, correct = constructed_study([0.8, 0.6, 0.7], [0.7, 0.9, 0.5, 0.6])
    null = permutation_test_acc_diff(correct, groups, subjects, n_perm=2000, seed=0)
    assert null["diff"] == pytest.approx(0.025)
    assert null["p_value"] > 0.05


def test_permutation_keeps_each_subject_together():
    _, _, groups, subjects, correct = constructed_study([0.8, 1.0], [0.5, 0.7])
    groups = groups.copy()
    groups[0] = "B"  # subject A00 now has images in both groups
    with pytest.raises(GroupStatsError, match="subject 'A00' has images in both groups"):
        permutation_test_acc_diff(correct, groups, subjects)
    groups[0] = "A"
    groups[-10:] = "C"  # the last subject forms a third group
    with pytest.raises(GroupStatsError, match=r"exactly two groups, got \['A', 'B', 'C'\]"):
        permutation_test_acc_diff(correct, groups, subjects)


def test_group_rates_match_confusion_matrix_by_hand():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, size=90)
    y_pred = np.where(rng.random(90) < 0.6, y_true, rng.integers(0, 3, size=90))
    groups = np.array(["F", "M", None] * 30, dtype=object)
    rates = group_rates(y_true, y_pred, groups, CLASSES)
    assert list(rates) == ["F", "M", "unknown"]
    assert sum(r["n"] for r in rates.values()) == 90

    members = groups == "F"
    matrix = confusion_matrix(y_true[members], y_pred[members], labels=[0, 1, 2])
    n = matrix.sum()
    assert rates["F"]["n"] == n == 30
    assert rates["F"]["acc"] == np.trace(matrix) / n
    for c, name in enumerate(CLASSES):
        tp = matrix[c, c]
        fn = matrix[c, :].sum() - tp
        fp = matrix[:, c].sum() - tp
        tn = n - tp - fn - fp
        assert rates["F"]["tpr"][name] == tp / (tp + fn)
        assert rates["F"]["fpr"][name] == fp / (fp + tn)


def test_group_rates_nan_for_absent_class_and_gap_summary():
    y_true = np.array([0, 0, 1, 1, 0, 0])
    y_pred = np.array([0, 1, 1, 1, 0, 0])
    groups = np.array(["x", "x", "x", "x", "y", "y"])
    rates = group_rates(y_true, y_pred, groups, CLASSES)
    assert rates["y"]["acc"] == 1.0 and rates["x"]["acc"] == 0.75
    assert np.isnan(rates["y"]["tpr"]["happy"])  # group y has no happy image
    assert np.isnan(rates["y"]["fpr"]["angry"])  # every y image is angry: no negatives
    assert rates["x"]["fpr"]["happy"] == 0.5  # one of two non-happy images called happy
    summary = gap_summary(rates)
    assert summary == {"acc_gap": 0.25, "acc_ratio": 0.75, "worst_group": "x", "best_group": "y"}


def test_bad_inputs_are_named():
    with pytest.raises(GroupStatsError, match=r"same length, got \{'y_true': 3, 'y_pred': 2"):
        group_rates([0, 1, 2], [0, 1], ["a", "a", "b"], CLASSES)
    with pytest.raises(GroupStatsError, match="y_pred holds class index 5, outside 0..2"):
        group_rates([0, 1], [0, 5], ["a", "b"], CLASSES)
    with pytest.raises(GroupStatsError, match="unknown statistic 'gap'"):
        cluster_bootstrap_ci([0], [0], ["a"], ["s"], statistic="gap")
    with pytest.raises(GroupStatsError, match=r"group 'z' is not among the groups \['a'\]"):
        cluster_bootstrap_ci([0], [0], ["a"], ["s"], statistic="acc", group="z")
