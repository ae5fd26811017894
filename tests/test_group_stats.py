"""Per-group rates, accuracy gaps, subject-level bootstrap CIs and permutation tests."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from fer_ray.core.group_stats import (
    GroupStatsError,
    accuracy_ci,
    compare_groups,
    group_rates,
    holm_adjust,
    rate_outcomes,
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


def test_permutation_p_is_large_without_a_real_difference():
    # both groups' subjects spread around one accuracy (A: 0.70, B: 0.675 by construction)
    _, _, groups, subjects, correct = constructed_study([0.8, 0.6, 0.7], [0.7, 0.9, 0.5, 0.6])
    result = compare_groups(correct, groups, subjects, reference="A", n_boot=500, n_perm=2000, seed=0)
    assert result["differences"][0]["diff"] == pytest.approx(-0.025)
    assert result["differences"][0]["p_value"] > 0.05
    assert result["differences"][0]["low"] < 0 < result["differences"][0]["high"]


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


def test_group_rates_nan_for_absent_class():
    y_true = np.array([0, 0, 1, 1, 0, 0])
    y_pred = np.array([0, 1, 1, 1, 0, 0])
    groups = np.array(["x", "x", "x", "x", "y", "y"])
    rates = group_rates(y_true, y_pred, groups, CLASSES)
    assert rates["y"]["acc"] == 1.0 and rates["x"]["acc"] == 0.75
    assert np.isnan(rates["y"]["tpr"]["happy"])  # group y has no happy image
    assert np.isnan(rates["y"]["fpr"]["angry"])  # every y image is angry: no negatives
    assert rates["x"]["fpr"]["happy"] == 0.5  # one of two non-happy images called happy


def test_bad_inputs_are_named():
    with pytest.raises(GroupStatsError, match=r"same length, got \{'y_true': 3, 'y_pred': 2"):
        group_rates([0, 1, 2], [0, 1], ["a", "a", "b"], CLASSES)
    with pytest.raises(GroupStatsError, match="y_pred holds class index 5, outside 0..2"):
        group_rates([0, 1], [0, 5], ["a", "b"], CLASSES)


# ----------------------------------------------------------------------------------------------
# compare_groups: signed differences against a named reference, subject-level tests
# ----------------------------------------------------------------------------------------------


def test_compare_groups_reports_signed_named_differences_with_bounded_intervals():
    # A: subjects at 0.8 / 1.0 (0.9), B: 0.5 / 0.7 (0.6); B - A is negative and says so
    y_true, y_pred, groups, subjects, correct = constructed_study([0.8, 1.0], [0.5, 0.7])
    result = compare_groups(correct, groups, subjects, reference="A", n_boot=1000, n_perm=1000, seed=0)
    assert result["reference"] == "A" and result["design"] == "between"
    [difference] = result["differences"]
    assert difference["group"] == "B" and difference["reference"] == "A"
    assert difference["diff"] == pytest.approx(-0.3)
    assert difference["low"] < -0.3 < difference["high"] < 0
    assert difference["p_value"] < 0.01 and difference["p_holm"] == difference["p_value"] == result["omnibus_p"]
    by_group = {row["group"]: row for row in result["groups"]}
    assert by_group["A"]["rate"] == pytest.approx(0.9) and by_group["B"]["rate"] == pytest.approx(0.6)
    assert by_group["A"]["n_subjects"] == 20 and by_group["A"]["n_images"] == 200
    for row in result["groups"]:
        assert 0 <= row["low"] <= row["rate"] <= row["high"] <= 1
    # the other order is the mirror image
    mirrored = compare_groups(correct, groups, subjects, reference="B", n_boot=1000, n_perm=1000, seed=0)["differences"][0]
    assert mirrored["diff"] == pytest.approx(0.3) and mirrored["p_value"] == pytest.approx(difference["p_value"], abs=0.01)


def test_compare_groups_intervals_never_leave_the_unit_interval_even_at_perfect_accuracy():
    _, _, groups, subjects, correct = constructed_study([1.0], [0.9, 1.0], subjects_per_group=4)
    result = compare_groups(correct, groups, subjects, reference="A", n_boot=500, n_perm=200)
    assert [(row["low"], row["high"]) for row in result["groups"]][0] == (1.0, 1.0)
    assert all(0 <= row["low"] <= row["high"] <= 1 for row in result["groups"])
    assert all(-1 <= d["low"] <= d["high"] <= 1 for d in result["differences"])


def test_compare_groups_default_reference_is_the_group_with_most_people_and_holm_is_applied():
    rng = np.random.default_rng(0)
    sizes = {"a": 3, "b": 9, "c": 5}
    groups = np.repeat(list(sizes), [10 * n for n in sizes.values()])
    subjects = np.repeat([f"{g}{i}" for g, n in sizes.items() for i in range(n)], 10)
    correct = rng.random(len(groups)) < 0.7
    result = compare_groups(correct, groups, subjects, n_boot=200, n_perm=500)
    assert result["reference"] == "b"
    assert [d["group"] for d in result["differences"]] == ["a", "c"]
    p = [d["p_value"] for d in result["differences"]]
    np.testing.assert_allclose([d["p_holm"] for d in result["differences"]], holm_adjust(p))
    assert 0 < result["omnibus_p"] <= 1


def test_holm_adjust_matches_the_step_down_rule_by_hand():
    # sorted: 0.01 * 4 = 0.04; 0.03 * 3 = 0.09; 0.04 * 2 = 0.08 -> 0.09 (monotone); 0.2 * 1 = 0.2
    np.testing.assert_allclose(holm_adjust([0.04, 0.01, 0.2, 0.03]), [0.09, 0.04, 0.2, 0.09])
    np.testing.assert_allclose(holm_adjust([0.5, 0.6]), [1.0, 1.0])


def test_within_subject_design_is_recognised_and_its_pairing_kept():
    # every person in both sessions; persons differ a lot, sessions not at all: a between-subject
    # analysis would see noise, the within-subject one sees identical halves -> p = 1
    subjects = np.repeat([f"P{i}" for i in range(8)], 10)
    sessions = np.tile(np.repeat(["A", "B"], 5), 8)
    ability = np.repeat(np.arange(8) % 6, 10)  # 0..5 of each person's 5 images per session right
    correct = np.tile(np.arange(5), 16) < ability
    result = compare_groups(correct, sessions, subjects, reference="A", n_boot=300, n_perm=300)
    assert result["design"] == "within"
    [difference] = result["differences"]
    assert difference["diff"] == 0 and difference["p_value"] == 1.0
    assert difference["low"] <= 0 <= difference["high"]
    mixed = np.where(subjects == "P0", "A", sessions)  # P0 only in session A now
    assert compare_groups(correct, mixed, subjects, n_boot=50, n_perm=50)["design"] == "mixed"


def test_rate_outcomes_feed_tpr_and_fpr_as_group_rates_define_them():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, size=120)
    y_pred = np.where(rng.random(120) < 0.6, y_true, rng.integers(0, 3, size=120))
    groups = np.array(["F", "M"] * 60)
    subjects = np.array([f"S{i % 12}" for i in range(120)])
    rates = group_rates(y_true, y_pred, groups, CLASSES)
    for rate in ("tpr", "fpr"):
        rows, successes = rate_outcomes(y_true, y_pred, rate, class_index=1)
        result = compare_groups(successes, groups[rows], subjects[rows], reference="M", n_boot=100, n_perm=100)
        by_group = {row["group"]: row["rate"] for row in result["groups"]}
        assert by_group == pytest.approx({g: rates[g][rate]["happy"] for g in ("F", "M")})
        assert result["differences"][0]["diff"] == pytest.approx(rates["F"][rate]["happy"] - rates["M"][rate]["happy"])
    rows, successes = rate_outcomes(y_true, y_pred, "acc")
    assert rows.all() and np.array_equal(successes, y_true == y_pred)


def test_accuracy_ci_is_subject_clustered_and_bounded():
    correct_subjects = [1.0] * 9 + [0.0]
    _, _, groups, subjects, correct = constructed_study(correct_subjects, correct_subjects)
    keep = groups == "A"
    low, high = accuracy_ci(correct[keep], subjects[keep], n_boot=2000, seed=0)
    image_low, image_high = accuracy_ci(correct[keep], np.arange(keep.sum()), n_boot=2000, seed=0)
    assert 0 <= low < 0.9 < high <= 1
    assert high - low > 2 * (image_high - image_low)  # people move with all their images
    assert accuracy_ci(np.ones(30, dtype=bool), np.repeat(["a", "b", "c"], 10)) == (1.0, 1.0)


def test_accuracy_ci_covers_the_true_accuracy_about_95_percent_with_eight_people():
    rng = np.random.default_rng(0)
    hits = 0
    for index in range(300):
        ability, images = rng.beta(7, 3, size=8), rng.integers(5, 15, size=8)
        correct = np.concatenate([rng.random(n) < a for n, a in zip(images, ability)])
        low, high = accuracy_ci(correct, np.repeat(np.arange(8), images), n_boot=500, seed=index)
        hits += low <= 0.7 <= high
    assert 0.90 <= hits / 300 <= 0.99, hits / 300


def test_compare_groups_bad_inputs_are_named():
    with pytest.raises(GroupStatsError, match=r"reference group 'Z' is not among the groups \['A', 'B'\]"):
        compare_groups(np.array([True, False]), ["A", "B"], ["s", "t"], reference="Z")
    with pytest.raises(GroupStatsError, match=r"at least two groups, got \['A'\]"):
        compare_groups(np.array([True, False]), ["A", "A"], ["s", "t"])
    with pytest.raises(GroupStatsError, match="successes must be a 1-D bool array"):
        compare_groups(np.array([1, 0]), ["A", "B"], ["s", "t"])
