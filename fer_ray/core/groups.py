"""Per-group results for the demographic-bias experiment, and their uncertainty, on plain arrays.

Images of one person are not independent (same face, same session), so the uncertainty of a group
accuracy or of a gap between groups is computed over SUBJECTS (identities): the cluster bootstrap
resamples subjects with all their images, the permutation test permutes group labels subject by
subject. Labels are class indices into ``classes``; groups and subjects are any hashable values
(None -> the group "unknown", as in fer_ray.core.evaluate.group_accuracy).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import multilabel_confusion_matrix

from fer_ray.core.evaluate import UNKNOWN_GROUP

#: Statistics cluster_bootstrap_ci knows.
BOOTSTRAP_STATISTICS: tuple[str, ...] = ("acc_gap", "acc_ratio", "acc")


class GroupStatsError(ValueError):
    """Inputs the group statistics cannot use; the message names the argument and value at fault."""


def group_rates(y_true, y_pred, groups, classes) -> dict:
    """Accuracy and one-vs-rest rates per class within each group.

    y_true, y_pred: int (N,) class indices into ``classes``; groups: (N,) hashable values.
    Returns {group: {"n": images, "acc": fraction correct,
    "tpr": {class: TP / (TP + FN), NaN when the group has no image of that class},
    "fpr": {class: FP / (FP + TN), one-vs-rest, NaN when every image of the group is that class}}},
    groups in sorted order; the "n" values add up to N.
    """
    true, predicted = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    keys = _group_keys(groups)
    _same_length(y_true=true, y_pred=predicted, groups=keys)
    for name, labels in (("y_true", true), ("y_pred", predicted)):
        outside = labels[(labels < 0) | (labels >= len(classes))]
        if outside.size:
            raise GroupStatsError(
                f"{name} holds class index {int(outside[0])}, outside 0..{len(classes) - 1} ({len(classes)} classes)"
            )
    rates = {}
    for group in _sorted_values(keys):
        members = keys == group
        # (C, 2, 2) one-vs-rest counts per class: [[TN, FP], [FN, TP]].
        counts = multilabel_confusion_matrix(true[members], predicted[members], labels=list(range(len(classes))))
        tn, fp, fn, tp = (counts[:, i, j].astype(float) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr, fpr = tp / (tp + fn), fp / (fp + tn)
        rates[group] = {
            "n": int(members.sum()),
            "acc": float(np.mean(true[members] == predicted[members])),
            "tpr": {name: float(value) for name, value in zip(classes, tpr)},
            "fpr": {name: float(value) for name, value in zip(classes, fpr)},
        }
    return rates


def gap_summary(rates: dict) -> dict:
    """The spread of accuracy across groups, from group_rates (or any {group: {"acc": ...}}).

    Returns {"acc_gap": best - worst accuracy, "acc_ratio": worst / best (NaN when best is 0),
    "worst_group", "best_group"} (ties -> the first group in sorted order).
    """
    if not rates:
        raise GroupStatsError("gap_summary needs at least one group; rates is empty")
    accuracy = {group: values["acc"] for group, values in rates.items()}
    worst, best = min(accuracy, key=accuracy.get), max(accuracy, key=accuracy.get)
    return {
        "acc_gap": accuracy[best] - accuracy[worst],
        "acc_ratio": accuracy[worst] / accuracy[best] if accuracy[best] > 0 else float("nan"),
        "worst_group": worst,
        "best_group": best,
    }


def cluster_bootstrap_ci(
    y_true,
    y_pred,
    groups,
    subjects,
    statistic: str = "acc_gap",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    group=None,
) -> dict[str, float]:
    """Percentile confidence interval of an accuracy statistic, resampling subjects within groups.

    Each replicate draws, within every group, as many subjects as the group has, with replacement,
    each bringing all its images of that group (stratified cluster bootstrap), and recomputes the
    statistic on the image-level accuracies. statistic: "acc_gap" (best - worst group accuracy),
    "acc_ratio" (worst / best) or "acc" (the accuracy of ``group``). A subject found in several
    groups (e.g. groups = camera angle) is resampled independently in each, which ignores that
    pairing. Returns {"estimate" (on the data as given), "low", "high", "n_boot", "confidence"}.
    """
    if statistic not in BOOTSTRAP_STATISTICS:
        raise GroupStatsError(f"unknown statistic {statistic!r}; choose one of {list(BOOTSTRAP_STATISTICS)}")
    if statistic == "acc" and group is None:
        raise GroupStatsError("statistic 'acc' needs group=<the group value>")
    _check_level(confidence, n_boot, "n_boot")
    true, predicted = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    keys, subject_keys = _group_keys(groups), _subject_keys(subjects)
    _same_length(y_true=true, y_pred=predicted, groups=keys, subjects=subject_keys)
    correct = true == predicted
    group_values = _sorted_values(keys)
    if statistic == "acc" and group not in group_values:
        raise GroupStatsError(f"group {group!r} is not among the groups {group_values}")
    if statistic == "acc":
        group_values = [group]

    rng = np.random.default_rng(seed)
    estimates, replicates = [], []
    for value in group_values:
        members = keys == value
        correct_per_subject, images_per_subject = _per_subject_counts(correct[members], subject_keys[members])
        estimates.append(correct_per_subject.sum() / images_per_subject.sum())
        # Vectorised cluster resampling: (n_boot, subjects) draws of subject indices.
        draws = rng.integers(0, len(images_per_subject), size=(n_boot, len(images_per_subject)))
        replicates.append(correct_per_subject[draws].sum(axis=1) / images_per_subject[draws].sum(axis=1))
    estimate = _statistic(np.array(estimates)[None, :], statistic)[0]
    values = _statistic(np.stack(replicates, axis=1), statistic)
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return {
        "estimate": float(estimate),
        "low": float(low),
        "high": float(high),
        "n_boot": n_boot,
        "confidence": confidence,
    }


def permutation_test_acc_diff(correct, groups, subjects, n_perm: int = 2000, seed: int = 0) -> dict:
    """Two-sided permutation test of the accuracy difference between exactly two groups.

    correct: bool (N,) per image; groups: (N,) with two distinct values; subjects: (N,) identities,
    each in one group only. Group labels are permuted between SUBJECTS (a person's images stay
    together and keep one label), the subject count of each group fixed. diff = acc(first group)
    - acc(second group), groups in sorted order. p_value = (1 + #{|permuted diff| >= |diff|}) /
    (1 + n_perm). Returns {"diff", "p_value", "groups": [first, second], "n_perm"}.
    """
    correct = np.asarray(correct)
    if correct.dtype != bool:
        raise GroupStatsError(f"correct must be a bool array, got dtype {correct.dtype}")
    keys, subject_keys = _group_keys(groups), _subject_keys(subjects)
    _same_length(correct=correct, groups=keys, subjects=subject_keys)
    group_values = _sorted_values(keys)
    if len(group_values) != 2:
        raise GroupStatsError(f"permutation_test_acc_diff needs exactly two groups, got {group_values}")
    if n_perm < 1:
        raise GroupStatsError(f"n_perm must be at least 1, got {n_perm}")

    subject_values, subject_index = np.unique(subject_keys, return_inverse=True)
    first_group_rows = keys == group_values[0]
    in_first = np.bincount(subject_index, weights=first_group_rows, minlength=len(subject_values))
    images_per_subject = np.bincount(subject_index, minlength=len(subject_values)).astype(float)
    mixed = (in_first > 0) & (in_first < images_per_subject)
    if mixed.any():
        raise GroupStatsError(
            f"subject {str(subject_values[mixed][0])!r} has images in both groups {group_values}; group labels "
            "can only be permuted between subjects that each belong to one group"
        )
    correct_per_subject = np.bincount(subject_index, weights=correct, minlength=len(subject_values))
    subject_in_first = in_first > 0

    def accuracy_difference(labels: np.ndarray) -> np.ndarray:
        """labels: bool (..., subjects), True = first group -> acc(first) - acc(second), (...)."""
        first = (labels * correct_per_subject).sum(-1) / (labels * images_per_subject).sum(-1)
        second = (~labels * correct_per_subject).sum(-1) / (~labels * images_per_subject).sum(-1)
        return first - second

    observed = float(accuracy_difference(subject_in_first))
    rng = np.random.default_rng(seed)
    permuted = rng.permuted(np.tile(subject_in_first, (n_perm, 1)), axis=1)
    differences = accuracy_difference(permuted)
    # The small tolerance keeps ties (the same difference up to rounding) counted as extreme.
    extreme = np.abs(differences) >= abs(observed) - 1e-12
    return {
        "diff": observed,
        "p_value": float((1 + extreme.sum()) / (1 + n_perm)),
        "groups": list(group_values),
        "n_perm": n_perm,
    }


# ----------------------------------------------------------------------------------------------


def _statistic(accuracies: np.ndarray, statistic: str) -> np.ndarray:
    """accuracies: (replicates, groups) -> the statistic per replicate, (replicates,)."""
    if statistic == "acc":
        return accuracies[:, 0]
    best, worst = accuracies.max(axis=1), accuracies.min(axis=1)
    if statistic == "acc_gap":
        return best - worst
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, worst / best, np.nan)


def _per_subject_counts(correct: np.ndarray, subject_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct images and images per subject, float (subjects,) each."""
    _, subject_index = np.unique(subject_keys, return_inverse=True)
    return (
        np.bincount(subject_index, weights=correct).astype(float),
        np.bincount(subject_index).astype(float),
    )


def _as_labels(values, name: str) -> np.ndarray:
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise GroupStatsError(
            f"{name} must be a 1-D array of integer class indices, got shape {array.shape} dtype {array.dtype}"
        )
    return array.astype(np.int64)


def _group_keys(groups) -> np.ndarray:
    """Group values as an object array of plain Python values (numpy scalars unwrapped, None -> "unknown")."""
    values = [UNKNOWN_GROUP if g is None else g.item() if isinstance(g, np.generic) else g for g in groups]
    return np.fromiter(values, dtype=object, count=len(values))  # not np.array: tuples stay single values


def _subject_keys(subjects) -> np.ndarray:
    if any(s is None for s in subjects):
        raise GroupStatsError("subjects holds None; every image needs its identity")
    return np.array([str(s) for s in subjects])  # str: np.unique needs one orderable type


def _sorted_values(keys: np.ndarray) -> list:
    return sorted(set(keys.tolist()), key=str)


def _same_length(**arrays) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise GroupStatsError(f"arrays must have the same length, got {lengths}")
    if not next(iter(lengths.values())):
        raise GroupStatsError(f"arrays are empty: {lengths}")


def _check_level(confidence: float, count: int, count_name: str) -> None:
    if not 0 < confidence < 1:
        raise GroupStatsError(f"confidence must be in (0, 1), got {confidence}")
    if count < 1:
        raise GroupStatsError(f"{count_name} must be at least 1, got {count}")
