"""How good an emotion transfer is, measured against the real photographs of the test people.

Per case (source photo, target expression, real target photo of the same person, session, angle):
  target hit     an independently trained fer_ray classifier labels the transferred image as the target;
  identity hit   the transferred image's nearest real test photo OF THE TARGET EXPRESSION is the source
                 person's. Embedding (embed): the face interior (rows H/4..7H/8, columns H/4..3H/4: eyes,
                 nose, mouth, cheeks; no hair, no background) area-averaged to EMBED_SIZE x EMBED_SIZE px
                 and divided by its own mean (the photo's brightness gain cancels; skin and eye colour and
                 the layout of the features stay), flattened (3 * 12 * 12 = 432 values), Euclidean
                 distance. Chosen on VALIDATION people among six candidates so that it measures
                 something: the whole image averaged to 16 x 16 px (the first version) let the unchanged
                 source find its person every time (hair and background decide), so any small edit
                 scored 1.000; in the face interior the copy finds its person in 0.70 of the val cases
                 (its expression is the wrong one), the source plus the mean-face difference of the true
                 expressions in 0.79, the real target photo in 1.00 and the mean face in 0.11 (1/9).
                 The copy's score (identity_top1_copy) is reported beside it as the bar to clear.
  L1 real/copy/mean  mean absolute difference per pixel and channel in [0,1] space between the real
                 target photo and: the transferred image, the unchanged source (copy baseline), the
                 mean training face of the target expression (mean baseline).
Aggregates are means over cases; their 95 % intervals resample TEST PEOPLE (all their cases together),
since the cases of one person are not independent.

Metric names (fixed so MLflow lines them up): transfer_target_acc, transfer_identity_top1,
transfer_identity_top1_copy (the unchanged source's identity score: the bar a generator that edits
little clears trivially), transfer_l1_real, transfer_l1_copy, transfer_l1_mean, per target expression as ``<name>/<class>``,
intervals as ``<name>/subject_ci_low`` and ``/subject_ci_high``, and ``test_acc`` (the classifier on the
real test photos) beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_ray.core.data.records import TensorSplit
from fer_ray.core.evaluate import as_float_images, predict_logits
from fer_ray.core.transfer import TransferPairs, mean_faces  # noqa: F401 - mean_faces: re-exported

#: side in px of the area-averaged face interior used as the identity embedding
EMBED_SIZE = 12
#: the identity embedding in one line, as the run's tag and the report state it
EMBEDDING = "face interior (rows H/4..7H/8, cols H/4..3H/4) area-averaged to 12x12 px, divided by its mean, Euclidean"
#: the headline metrics that get a per-target value and a subject-clustered interval
HEADLINE = (
    "transfer_target_acc",
    "transfer_identity_top1",
    "transfer_identity_top1_copy",
    "transfer_l1_real",
    "transfer_l1_copy",
    "transfer_l1_mean",
)

#: (images float [0,1] (B, 3, S, S), target class indices int64 (B,)) -> transferred images like ``images``
TransferFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CaseScores:
    """Per-case results of one evaluation (M cases) and the classifier on the real photos (N images).

    l1_real, l1_copy, l1_mean: float (M,) mean |difference| in [0,1] pixel space (see module doc);
    predicted: int64 (M,) the classifier's class for each transferred image; target_label: int64 (M,);
    identity_hit: bool (M,); identity_hit_copy: bool (M,) the same check for the unchanged source (the
    copy baseline's identity score); subject: object (M,) the test person of each case;
    real_correct: bool (N,) the classifier right on each real photo of the split; real_subject: (N,).
    """

    l1_real: np.ndarray
    l1_copy: np.ndarray
    l1_mean: np.ndarray
    predicted: np.ndarray
    target_label: np.ndarray
    identity_hit: np.ndarray
    identity_hit_copy: np.ndarray
    subject: np.ndarray
    real_correct: np.ndarray
    real_subject: np.ndarray

    @property
    def target_hit(self) -> np.ndarray:
        """bool (M,): the classifier labels the transferred image as its target."""
        return self.predicted == self.target_label


def embed(images: torch.Tensor) -> torch.Tensor:
    """The identity embedding (module doc): float32 (N, 3 * EMBED_SIZE**2) from [0,1] (or uint8) images
    (N, 3, H, W): the face interior area-averaged to EMBED_SIZE px, divided by its mean (> 0)."""
    pictures = as_float_images(images.cpu()).float()
    height, width = pictures.shape[2:]
    interior = pictures[:, :, height // 4 : height - height // 8, width // 4 : width - width // 4]
    pooled = F.adaptive_avg_pool2d(interior, EMBED_SIZE)
    return (pooled / pooled.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)).flatten(1)


def score_cases(
    transfer: TransferFn,
    classifier: nn.Module,
    split: TensorSplit,
    subjects: np.ndarray,
    pairs: TransferPairs,
    class_means: torch.Tensor,
    batch_size: int = 64,
) -> CaseScores:
    """Run ``transfer`` on every case of ``pairs`` (positions into ``split``) and score each case.

    subjects: (N,) the person of every image of ``split``; class_means: mean_faces of the TRAINING
    images (C, 3, S, S). The gallery of the identity check is every real photo of ``split`` with the
    case's target expression. Batches of ``batch_size`` cases keep memory bounded at 224 px.
    """
    subjects = np.asarray(subjects, dtype=object)
    labels = split.labels.cpu().numpy()
    gallery = embed(split.images)
    real_predicted = predict_logits(classifier, split.images, batch_size=batch_size).argmax(dim=1).numpy()
    parts: dict[str, list[np.ndarray]] = {
        key: [] for key in ("l1_real", "l1_copy", "l1_mean", "predicted", "identity_hit", "identity_hit_copy")
    }
    for start in range(0, len(pairs), batch_size):
        rows = slice(start, start + batch_size)
        source = as_float_images(split.images[pairs.source[rows]]).float()
        real = as_float_images(split.images[pairs.target[rows]]).float()
        target_label = torch.from_numpy(pairs.target_label[rows])
        output = transfer(source, target_label).detach().float().cpu().clamp(0.0, 1.0)
        parts["l1_real"].append(_mean_abs(output, real))
        parts["l1_copy"].append(_mean_abs(source, real))
        parts["l1_mean"].append(_mean_abs(class_means[target_label], real))
        parts["predicted"].append(predict_logits(classifier, output, batch_size=batch_size).argmax(dim=1).numpy())
        for key, images in (("identity_hit", output), ("identity_hit_copy", source)):
            parts[key].append(
                _nearest_is_same_person(embed(images), gallery, labels, subjects, pairs.target_label[rows], pairs.subject[rows])
            )
    empty = {"predicted": np.int64, "identity_hit": bool, "identity_hit_copy": bool}
    joined = {key: np.concatenate(values) if values else np.zeros(0, dtype=empty.get(key, float)) for key, values in parts.items()}
    return CaseScores(
        **joined,
        target_label=pairs.target_label,
        subject=pairs.subject,
        real_correct=real_predicted == labels,
        real_subject=subjects,
    )


def _mean_abs(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """float64 (B,): mean |a - b| over channels and pixels of each image pair."""
    return (a - b).abs().mean(dim=(1, 2, 3)).double().numpy()


def _nearest_is_same_person(queries, gallery, gallery_labels, gallery_subjects, target_labels, case_subjects) -> np.ndarray:
    """bool (B,): per query, whether the nearest gallery image of its target class shows its person."""
    distances = torch.cdist(queries.double(), gallery.double()).numpy()  # (B, N)
    hits = np.zeros(len(queries), dtype=bool)
    for i, (label, subject) in enumerate(zip(target_labels, case_subjects)):
        candidates = np.flatnonzero(gallery_labels == label)
        if candidates.size:
            hits[i] = gallery_subjects[candidates[np.argmin(distances[i, candidates])]] == subject
    return hits


def subject_mean_ci(values, subjects, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """Mean of per-case ``values`` and its percentile interval from a cluster bootstrap over subjects.

    Each replicate draws as many subjects as there are, with replacement, each bringing all its
    cases; the replicate statistic is the mean over the drawn cases (a ratio of sums, so people with
    more cases weigh more, as in the point estimate). Hand-written rather than
    groups.cluster_bootstrap_ci, which takes class labels, not real-valued per-case scores (L1).
    Returns {"estimate", "low", "high", "n" (cases), "subjects"}; (nan, nan) interval with one subject.
    """
    values = np.asarray(values, dtype=float)
    subject_ids, subject_of_case = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    sums = np.bincount(subject_of_case, weights=values, minlength=len(subject_ids))
    counts = np.bincount(subject_of_case, minlength=len(subject_ids)).astype(float)
    result = {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "n": int(values.size), "subjects": len(subject_ids)}
    if values.size == 0:
        return result
    result["estimate"] = float(values.mean())
    if len(subject_ids) < 2:
        return result
    draws = np.random.default_rng(seed).integers(0, len(subject_ids), size=(n_boot, len(subject_ids)))
    replicates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - confidence) / 2
    result["low"], result["high"] = (float(q) for q in np.quantile(replicates, [tail, 1 - tail]))
    return result


def summarize(scores: CaseScores, classes, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """The metrics of one evaluation (names in the module doc), each headline with its subject CI.

    Also: ``transfer_l1_gain_copy`` = l1_copy - l1_real and ``transfer_l1_gain_mean`` = l1_mean -
    l1_real per case (positive: the transfer is closer to the real photo than the baseline), with
    subject-clustered intervals (an interval above 0 means "below that baseline" holds over people);
    ``test_acc`` with its interval; ``transfer_cases`` and ``transfer_test_people``.
    """
    per_case = {
        "transfer_target_acc": scores.target_hit.astype(float),
        "transfer_identity_top1": scores.identity_hit.astype(float),
        "transfer_identity_top1_copy": scores.identity_hit_copy.astype(float),
        "transfer_l1_real": scores.l1_real,
        "transfer_l1_copy": scores.l1_copy,
        "transfer_l1_mean": scores.l1_mean,
        "transfer_l1_gain_copy": scores.l1_copy - scores.l1_real,
        "transfer_l1_gain_mean": scores.l1_mean - scores.l1_real,
    }
    metrics: dict[str, float] = {}
    for name, values in per_case.items():
        interval = subject_mean_ci(values, scores.subject, n_boot=n_boot, seed=seed)
        metrics[name] = interval["estimate"]
        metrics[f"{name}/subject_ci_low"], metrics[f"{name}/subject_ci_high"] = interval["low"], interval["high"]
        if name in HEADLINE:
            for index, class_name in enumerate(classes):
                members = scores.target_label == index
                if members.any():
                    metrics[f"{name}/{class_name}"] = float(values[members].mean())
    real = subject_mean_ci(scores.real_correct.astype(float), scores.real_subject, n_boot=n_boot, seed=seed)
    metrics["test_acc"] = real["estimate"]
    metrics["test_acc/subject_ci_low"], metrics["test_acc/subject_ci_high"] = real["low"], real["high"]
    metrics["transfer_cases"] = float(len(scores.l1_real))
    metrics["transfer_test_people"] = float(len(np.unique(np.asarray(scores.subject, dtype=str))))
    return metrics
