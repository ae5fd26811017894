"""Per-group results for the demographic-bias experiment, and their uncertainty, on plain arrays.

Images of one person are not independent (same face, same session), so the uncertainty of a group
accuracy or of a difference between groups is computed over SUBJECTS (identities): the cluster
bootstrap resamples subjects with all their images, the permutation tests move group labels only
between units that are exchangeable when the group has no effect (compare_groups). A difference is
always signed and named (group - reference), never a max-minus-min that cannot be negative. Labels
are class indices into ``classes``; groups and subjects are any hashable values (None -> the group
"unknown", as in fer_ray.core.evaluate.group_accuracy).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import multilabel_confusion_matrix

from fer_ray.core.evaluate import UNKNOWN_GROUP


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
            raise GroupStatsError(f"{name} holds class index {int(outside[0])}, outside 0..{len(classes) - 1} ({len(classes)} classes)")
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


# ----------------------------------------------------------------------------------------------
# Signed, testable comparisons between groups (what the bias experiment reports)
# ----------------------------------------------------------------------------------------------

#: What compare_groups' intervals and tests are over, in one line for report tables.
COMPARISON_COVERS = (
    "over test people: subject-clustered bootstrap (people resampled with all their images) for CIs, "
    "subject-level permutation of group labels for p-values"
)


def compare_groups(
    successes,
    groups,
    subjects,
    reference=None,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Per-group rates and signed differences against a reference group, tested at the level of people.

    successes: bool (N,) per image (correct, for accuracy; see ``rate_outcomes`` for TPR / FPR);
    groups: (N,) hashable values, at least two distinct (None -> "unknown"); subjects: (N,) identities.
    reference: the group every other group is compared with (default: the group with the most people,
    ties -> the most images, then the first in sorted order); each difference is ``rate(group) -
    rate(reference)``, signed and named, never a max-minus-min.

    Design: a person may belong to one group (gender, race: "between") or to several (camera angle,
    session: "within"; "mixed" when both occur). Everything below respects that:

    - CIs: percentile cluster bootstrap. People are resampled with all their images, within strata
      of people who share the same set of groups (between: within each group; within: all people
      together, which keeps each person's pairing across groups). Rates are pooled image-level
      fractions of each replicate, so every rate interval lies in [0, 1], every difference in [-1, 1].
    - p-values: permutation tests of "group has no effect" that move group labels only between units
      that are exchangeable under it. People seen in one group swap labels with each other (all their
      images move together); a person seen in several groups has the group labels of their own
      images shuffled among those images (a person's images are exchangeable when the group has no
      effect; where the images also differ otherwise, e.g. KDEF's seven expressions at every angle,
      shuffling across that balance only widens the null distribution: conservative, never liberal). p = (1 + #{permuted statistic >= observed}) /
      (1 + n_perm).  Pairwise statistic: |rate(g) - rate(reference)| on the data of those two groups;
      omnibus statistic (three or more groups): sum_g n_g (rate_g - overall rate)^2, n_g images.
    - Multiple comparisons: Holm's step-down adjustment over the pairwise p-values (family = the
      differences against the reference). The difference CIs are NOT adjusted (per comparison).

    Returns {"reference", "design", "omnibus_p" (three or more groups; with two it is the one
    pairwise p), "groups": [{"group", "n_images", "n_subjects", "rate", "low", "high"}...] in sorted
    order, "differences": [{"group", "reference", "diff", "low", "high", "p_value", "p_holm"}...]
    for every group but the reference, "n_boot", "n_perm", "confidence", "covers"}.
    """
    _check_level(confidence, n_boot, "n_boot")
    if n_perm < 1:
        raise GroupStatsError(f"n_perm must be at least 1, got {n_perm}")
    success = _success_vector(successes)
    keys, subject_keys = _group_keys(groups), _subject_keys(subjects)
    _same_length(successes=success, groups=keys, subjects=subject_keys)
    group_values = _sorted_values(keys)
    if len(group_values) < 2:
        raise GroupStatsError(f"compare_groups needs at least two groups, got {group_values}")
    table = _SubjectTable.build(success, keys, subject_keys, group_values)
    if reference is None:
        reference = group_values[table.default_reference()]
    elif reference not in group_values:
        raise GroupStatsError(f"reference group {reference!r} is not among the groups {group_values}")
    ref = group_values.index(reference)

    rng = np.random.default_rng(seed)
    rates = table.correct.sum(0) / table.images.sum(0)
    boot_rates = table.bootstrap_rates(n_boot, rng)
    people = (table.images > 0).sum(0)
    others = [g for g in range(len(group_values)) if g != ref]
    rate_low, rate_high = np.empty(len(group_values)), np.empty(len(group_values))
    diff_low, diff_high = np.zeros(len(group_values)), np.zeros(len(group_values))
    rate_tails = expanded_tail(confidence, people)
    # differences: simultaneous over the family (Bonferroni), as the Holm-adjusted p-values are
    diff_tails = expanded_tail(1 - (1 - confidence) / len(others), np.minimum(people, people[ref]))
    for g in range(len(group_values)):
        rate_low[g], rate_high[g] = np.quantile(boot_rates[:, g], [rate_tails[g], 1 - rate_tails[g]])
        if g != ref:
            diff = boot_rates[:, g] - boot_rates[:, ref]
            diff_low[g], diff_high[g] = np.quantile(diff, [diff_tails[g], 1 - diff_tails[g]])

    p_values = np.array([table.pair_p_value(g, ref, n_perm, rng) for g in others])
    p_holm = holm_adjust(p_values)
    omnibus = table.omnibus_p_value(n_perm, rng) if len(group_values) > 2 else float(p_values[0])
    return {
        "reference": reference,
        "design": table.design(),
        "omnibus_p": omnibus,
        "groups": [
            {
                "group": value,
                "n_images": int(table.images[:, g].sum()),
                "n_subjects": int((table.images[:, g] > 0).sum()),
                "rate": float(rates[g]),
                "low": float(rate_low[g]),
                "high": float(rate_high[g]),
            }
            for g, value in enumerate(group_values)
        ],
        "differences": [
            {
                "group": group_values[g],
                "reference": reference,
                "diff": float(rates[g] - rates[ref]),
                "low": float(diff_low[g]),
                "high": float(diff_high[g]),
                "p_value": float(p),
                "p_holm": float(adjusted),
            }
            for g, p, adjusted in zip(others, p_values, p_holm)
        ],
        "n_boot": n_boot,
        "n_perm": n_perm,
        "confidence": confidence,
        "covers": COMPARISON_COVERS,
    }


def rate_outcomes(y_true, y_pred, rate: str, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images a rate is measured on and whether each counts as a success: (rows bool (N,), successes bool (rows,)).

    rate: "acc" (all images; success = correct), "tpr" (images of class ``class_index``; success =
    predicted that class) or "fpr" (images of every other class; success = wrongly predicted that
    class, one-vs-rest). Feed ``successes`` with the groups / subjects of ``rows`` to compare_groups.
    """
    true, predicted = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    _same_length(y_true=true, y_pred=predicted)
    if rate == "acc":
        return np.ones(len(true), dtype=bool), true == predicted
    if rate not in ("tpr", "fpr") or class_index is None:
        raise GroupStatsError(f"rate must be 'acc', or 'tpr' / 'fpr' with a class_index; got {rate!r}, class_index={class_index}")
    rows = true == class_index if rate == "tpr" else true != class_index
    return rows, predicted[rows] == class_index


def accuracy_ci(correct, subjects, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Subject-clustered percentile bootstrap CI of one run's test accuracy: (low, high) in [0, 1].

    correct: bool (N,) per test image; subjects: (N,) identities. Each replicate draws as many people
    as the test set has, with replacement, each with all their images, and pools their images'
    accuracy. It covers the variation from WHICH PEOPLE are in the test set (a new sample of people
    like them), not the variation over training seeds; with few test people (under ~10) percentile
    intervals are known to be too narrow. Logged per run as ``test_acc/ci_low``, ``test_acc/ci_high``.
    """
    _check_level(confidence, n_boot, "n_boot")
    success = _success_vector(correct)
    subject_keys = _subject_keys(subjects)
    _same_length(correct=success, subjects=subject_keys)
    one_group = np.zeros(len(success), dtype=object)
    table = _SubjectTable.build(success, one_group, subject_keys, [0])
    replicates = table.bootstrap_rates(n_boot, np.random.default_rng(seed))[:, 0]
    tail = expanded_tail(confidence, len(table.images))
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def expanded_tail(confidence: float, n_clusters):
    """Lower tail probability of Hesterberg's expanded percentile bootstrap interval.

    The plain percentile interval of a mean over n independent units (here: people) is too narrow
    for small n: it uses the plug-in variance (factor (n-1)/n) and normal rather than t quantiles.
    The expanded interval (Hesterberg 2015, "What teachers should know about the bootstrap", Am.
    Stat. 69:371) takes the bootstrap quantiles at alpha'/2 with Phi^-1(alpha'/2) =
    sqrt(n/(n-1)) * t_{n-1}(alpha/2). n_clusters: an int or an array of them (-> a float array);
    below 2 -> the plain tail alpha/2 (no correction possible).
    """
    alpha = 1 - confidence
    n = np.asarray(n_clusters, dtype=float)
    safe = np.maximum(n, 2.0)
    tail = np.where(n < 2, alpha / 2, stats.norm.cdf(np.sqrt(safe / (safe - 1)) * stats.t.ppf(alpha / 2, df=safe - 1)))
    return float(tail) if tail.ndim == 0 else tail


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate), same order as given.

    Hand-written (five lines) rather than adding statsmodels for it: sorted ascending, the i-th
    (0-based) of m gets max over j <= i of min(1, (m - j) * p_(j)).
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


class _SubjectTable:
    """Correct and image counts per (subject, group): float (S, G) each, and the resampling /
    permutation machinery over them (vectorised over replicates)."""

    def __init__(self, correct: np.ndarray, images: np.ndarray) -> None:
        self.correct, self.images = correct, images

    @classmethod
    def build(cls, success, keys, subject_keys, group_values) -> _SubjectTable:
        _, subject_index = np.unique(subject_keys, return_inverse=True)
        position = {value: g for g, value in enumerate(group_values)}
        group_index = np.fromiter((position[k] for k in keys), dtype=np.int64, count=len(keys))
        n_subjects, n_groups = int(subject_index.max()) + 1, len(group_values)
        cell = subject_index * n_groups + group_index
        shape = (n_subjects, n_groups)
        return cls(
            np.bincount(cell, weights=success, minlength=n_subjects * n_groups).reshape(shape),
            np.bincount(cell, minlength=n_subjects * n_groups).reshape(shape).astype(float),
        )

    def default_reference(self) -> int:
        people, images = (self.images > 0).sum(0), self.images.sum(0)
        return int(np.lexsort((np.arange(len(people)), -images, -people))[0])

    def design(self) -> str:
        groups_per_subject = (self.images > 0).sum(1)
        if (groups_per_subject == 1).all():
            return "between"
        return "within" if (groups_per_subject > 1).all() else "mixed"

    def bootstrap_rates(self, n_boot: int, rng: np.random.Generator) -> np.ndarray:
        """(n_boot, G) pooled rates; people resampled within strata of the same set of groups."""
        _, stratum = np.unique(self.images > 0, axis=0, return_inverse=True)
        correct, images = np.zeros((n_boot, self.correct.shape[1])), np.zeros((n_boot, self.correct.shape[1]))
        for members in (np.flatnonzero(stratum.ravel() == s) for s in np.unique(stratum)):
            draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
            correct += self.correct[draws].sum(axis=1)
            images += self.images[draws].sum(axis=1)
        return correct / images

    def pair_p_value(self, group: int, reference: int, n_perm: int, rng: np.random.Generator) -> float:
        pair = _SubjectTable(self.correct[:, [group, reference]], self.images[:, [group, reference]])
        return pair._permutation_p(n_perm, rng, lambda c, n: np.abs(c[..., 0] / n[..., 0] - c[..., 1] / n[..., 1]))

    def omnibus_p_value(self, n_perm: int, rng: np.random.Generator) -> float:
        overall = self.correct.sum() / self.images.sum()
        return self._permutation_p(n_perm, rng, lambda c, n: (n * (c / n - overall) ** 2).sum(-1))

    def _permutation_p(self, n_perm: int, rng: np.random.Generator, statistic) -> float:
        """statistic(correct (..., G), images (..., G)) -> (...); larger = further from 'no effect'."""
        subject, group = np.nonzero(self.images > 0)  # one cell per (subject, group) with images
        cell_correct, cell_images = self.correct[subject, group], self.images[subject, group]
        several = (self.images > 0).sum(1)[subject] > 1
        # Exchangeable units. A person seen in one group: the whole person (their cell), in one shared
        # block (-1), so group labels move between such people. A person seen in several groups: each
        # of their images, in a block of their own, so labels move between that person's images only.
        # An image-level unit is rebuilt from its cell's counts (c correct of n -> c ones, n - c zeros).
        repeats = np.where(several, cell_images, 1).astype(np.int64)
        unit_cell = np.repeat(np.arange(len(subject)), repeats)
        rank_in_cell = np.arange(len(unit_cell)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        unit_correct = np.where(several[unit_cell], rank_in_cell < cell_correct[unit_cell], cell_correct[unit_cell])
        unit_images = np.where(several[unit_cell], 1.0, cell_images[unit_cell])
        block = np.where(several[unit_cell], subject[unit_cell], -1)
        order = np.argsort(block, kind="stable")
        group, block = group[unit_cell][order], block[order]
        cell_correct, cell_images = unit_correct[order].astype(float), unit_images[order]
        n_groups = self.images.shape[1]

        def totals(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows = labels.shape[0]
            flat = (np.arange(rows)[:, None] * n_groups + labels).ravel()
            c = np.bincount(flat, weights=np.tile(cell_correct, rows), minlength=rows * n_groups)
            n = np.bincount(flat, weights=np.tile(cell_images, rows), minlength=rows * n_groups)
            return c.reshape(rows, n_groups), n.reshape(rows, n_groups)

        observed = statistic(*totals(group[None, :]))[0]
        # block + U[0,1) sorts cells block by block, in random order within each block: a uniform
        # permutation of the group labels inside every block, for all permutations at once.
        shuffled = np.argsort(block[None, :] + rng.random((n_perm, len(group))), axis=1)
        permuted = statistic(*totals(group[shuffled]))
        # The small tolerance keeps ties (the same statistic up to rounding) counted as extreme.
        return float((1 + np.sum(permuted >= observed - 1e-12)) / (1 + n_perm))


def _success_vector(values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype != bool:
        raise GroupStatsError(f"successes must be a 1-D bool array (per image), got shape {array.shape} dtype {array.dtype}")
    return array


# ----------------------------------------------------------------------------------------------


def _as_labels(values, name: str) -> np.ndarray:
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise GroupStatsError(f"{name} must be a 1-D array of integer class indices, got shape {array.shape} dtype {array.dtype}")
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
