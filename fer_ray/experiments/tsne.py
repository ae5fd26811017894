"""t-SNE of a trained model's penultimate-layer features: how the expressions cluster.

One trial = one perplexity (the sweep's grid) on one trained model. The features of the chosen
splits (default: the held-out test images) are reduced by PCA to ``settings.pca_dims`` dimensions and
embedded by t-SNE in each of ``settings.dims`` (2 and/or 3). Per dimension the trial logs
``trustworthiness_<d>d`` (sklearn, k = settings.k_neighbors) and ``knn_acc_<d>d`` (leave-one-person-out
k-NN expression accuracy in the embedding: a point's neighbours are other people's images only), a scatter plot ``tsne_<d>d.png`` (colour = expression,
marker = settings.marker_by) and the coordinates (artifact ``tsne/embedding.npz``, which the report
redraws side by side). ``knn_acc_features`` (the same k-NN in the full feature space) and
``test_acc`` give the reference points. The report puts the mean over models of each (per
perplexity) and every model's k-NN accuracy on the parent run (parent_metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator
from threadpoolctl import threadpool_limits

from fer_ray.core.config import Strict
from fer_ray.core.files import atomic_write
from fer_ray.core.formatting import source_labels, summary_cell
from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments.base import Reporter, Trial, load_model_and_data
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable

if TYPE_CHECKING:  # annotations only
    import pandas as pd

    from fer_ray.core.data.prepare import PreparedData

# the science stack, imported on first use (fer_ray/core/lazy_import.py)
torch = lazy_module("torch")
embedding = lazy_module("fer_ray.core.embedding")
embedding_plots = lazy_module("fer_ray.core.embedding_plots")
evaluate = lazy_module("fer_ray.core.evaluate")
stats = lazy_module("fer_ray.core.stats")


class Settings(Strict):
    """The ``settings:`` section of a t-SNE sweep (the sweep's grid usually varies ``perplexity``)."""

    perplexity: float = Field(30.0, gt=0, description="t-SNE perplexity; must be below the number of images embedded")
    dims: list[Literal[2, 3]] = Field([2, 3], min_length=1, description="embedding dimensions, each embedded separately")
    splits: list[Literal["test", "train", "val"]] = Field(["test"], min_length=1, description="whose features to embed")
    marker_by: Literal["gender", "angle", "race", "session", "split", "none"] = Field("gender", description="marker of the scatter plots")
    pca_dims: int = Field(50, ge=2, description="PCA dimensions before t-SNE")
    k_neighbors: int = Field(5, ge=1, description="k of trustworthiness and k-NN accuracy")
    seed: int = Field(0, description="seed of PCA and t-SNE")

    @field_validator("dims", "splits")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"values must not repeat, got {values}")
        return values


EMBEDDING_FOLDER = "tsne"
EMBEDDING_FILE = "embedding.npz"
#: where a trial logs its embedding (the report redraws them side by side)
EMBEDDING_ARTIFACT = f"{EMBEDDING_FOLDER}/{EMBEDDING_FILE}"
#: metrics of one trial, per embedding dimension (see the module docstring)
QUALITY_METRICS = ("trustworthiness", "knn_acc")


def run(trial: Trial, reporter: Reporter) -> dict[str, float]:
    """Embed the features of trial.model_file for trial.settings.perplexity; returns the quality metrics."""
    cfg: Settings = trial.settings
    model, data = load_model_and_data(trial)
    rows, images, split_of_row = _gather_splits(data, cfg.splits)
    labels = data.dataset.labels[rows]
    people = data.dataset.identities[rows]  # k-NN accuracy counts only other people's images as neighbours
    _check_sizes(cfg, len(rows))
    reporter.tags(
        {
            "fer_ray.dataset_fingerprint": data.fingerprint,
            "fer_ray.protocol": data.protocol,
            "fer_ray.tsne_splits": "+".join(cfg.splits),
        }
    )

    features = embedding.extract_features(model, images)
    test_metrics = evaluate.classification_metrics(evaluate.predict_proba(model, data.test.images), data.test.labels, data.dataset.classes)
    metrics = {
        "n_images": float(len(rows)),
        "feature_dim": float(features.shape[1]),
        "test_acc": test_metrics["accuracy"],
        "knn_acc_features": embedding.embedding_quality(features, features, labels, people, cfg.k_neighbors)["knn_accuracy"],
    }
    groups = _marker_groups(data, rows, split_of_row, cfg.marker_by)
    embeddings = {}
    for dims in cfg.dims:
        # One thread: sklearn's Barnes-Hut t-SNE brings its own OpenMP runtime beside torch's, and on
        # a busy node their threads spin against each other (28 images: 26 s with 2 threads vs 0.3 s
        # with 1; 700 images: 87 s vs 13 s, on 2 loaded cores). One thread is quick at these sizes.
        with threadpool_limits(limits=1):
            coords = embedding.embed_tsne(features, perplexity=cfg.perplexity, dims=dims, seed=cfg.seed, pca_dims=cfg.pca_dims)
            quality = embedding.embedding_quality(features, coords, labels, people, cfg.k_neighbors)
        metrics[f"trustworthiness_{dims}d"] = quality["trustworthiness"]
        metrics[f"knn_acc_{dims}d"] = quality["knn_accuracy"]
        title = (
            f"{trial.sweep}: t-SNE {dims}-D, perplexity {cfg.perplexity:g} ({'+'.join(cfg.splits)}, {len(rows)} images)\n"
            f"trustworthiness {quality['trustworthiness']:.3f}, {cfg.k_neighbors}-NN accuracy {quality['knn_accuracy']:.3f}"
        )
        reporter.figure(
            embedding_plots.embedding_figure(coords, labels, data.dataset.classes, groups, cfg.marker_by, title), f"tsne_{dims}d.png"
        )
        embeddings[f"coords_{dims}d"] = coords.astype(np.float32)
    path = _save_embedding(reporter.work_dir / EMBEDDING_FILE, embeddings, labels, groups, data, rows, split_of_row)
    reporter.artifact(path, EMBEDDING_FOLDER)
    return metrics


# ----------------------------------------------------------------------------------------------


def _gather_splits(data: PreparedData, splits: list[str]) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Dataset rows (N,), uint8 images (N, 3, S, S) and the split name of each row, in ``splits`` order."""
    sides = [getattr(data, name) for name in splits]
    rows = np.concatenate([side.indices for side in sides])
    images = torch.cat([side.images for side in sides])
    split_of_row = np.concatenate([np.full(len(side), name, dtype=object) for name, side in zip(splits, sides)])
    return rows, images, split_of_row


def _check_sizes(cfg: Settings, n_images: int) -> None:
    if not cfg.perplexity < n_images:
        raise embedding.EmbeddingError(
            f"settings.perplexity={cfg.perplexity:g} must be below the number of images embedded "
            f"({n_images}, splits {cfg.splits}); lower it or add splits (settings.splits: [test, train])"
        )
    if not cfg.k_neighbors < n_images / 2:
        raise embedding.EmbeddingError(
            f"settings.k_neighbors={cfg.k_neighbors} must be below half the number of images embedded ({n_images})"
        )


def _marker_groups(data: PreparedData, rows: np.ndarray, split_of_row: np.ndarray, marker_by: str) -> np.ndarray | None:
    """The marker value of every embedded image (str, "unknown" where the dataset does not say)."""
    if marker_by == "none":
        return None
    values = split_of_row if marker_by == "split" else data.dataset.attribute(marker_by)[rows]
    return np.array(["unknown" if v is None else str(v) for v in values], dtype=object)


def _save_embedding(path: Path, embeddings: dict, labels, groups, data: PreparedData, rows, split_of_row) -> Path:
    """The coordinates and what the plots need, as .npz (no pickles), written atomically."""
    return atomic_write(
        path,
        lambda temporary: np.savez_compressed(
            temporary,
            **embeddings,
            labels=np.asarray(labels, dtype=np.int64),
            groups=np.asarray([] if groups is None else groups, dtype=str),
            split=np.asarray(split_of_row, dtype=str),
            files=np.asarray([data.dataset.images[int(r)].path.name for r in rows], dtype=str),
            classes=np.asarray(data.dataset.classes, dtype=str),
        ),
    )


# ----------------------------------------------------------------------------------------------
# Sweep report
# ----------------------------------------------------------------------------------------------


def report(table: TrialTable) -> Report:
    """A table of the embedding metrics per perplexity (mean over models [95 % CI]) and, for the first
    model, the embeddings of every perplexity side by side (one figure per dimension), read from each
    trial's ``tsne/embedding.npz``."""
    table = table.finished()
    cfg: Settings = table.settings
    runs = table.frame(settings=("perplexity",)).sort_values("perplexity", kind="stable")
    columns = [f"{name}_{d}d" for d in (2, 3) for name in QUALITY_METRICS if f"{name}_{d}d" in runs]
    columns += [c for c in ("knn_acc_features", "test_acc") if c in runs]
    lines = [
        "## t-SNE of the penultimate-layer features",
        "",
        f"Features of the {'+'.join(cfg.splits)} images; PCA to {cfg.pca_dims} dimensions, "
        f"then t-SNE. trustworthiness: neighbourhoods kept (1 = all); knn_acc: leave-one-person-out "
        f"{cfg.k_neighbors}-NN expression accuracy in the embedding, neighbours from other people only (knn_acc_features: the same in the "
        "full feature space). Cells: mean over models [95 % CI over models (training seeds) on the same images, Student t clipped to [0, 1]; '-' with one model].",
        "",
        "| perplexity | " + " | ".join(columns) + " | models |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for perplexity, group in runs.groupby("perplexity", sort=True):
        cells = [_mean_ci_cell(group[c]) for c in columns]
        lines.append(f"| {perplexity:g} | " + " | ".join(cells) + f" | {len(group)} |")
    figures, missing = _side_by_side(table, cfg.marker_by)
    if missing:
        lines += ["", f"Embeddings missing from the artifact store for {missing} run(s): see each run's tsne_*d.png."]
    return Report("\n".join(lines) + "\n", figures, parent_metrics(runs, columns))


def parent_metrics(runs: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """The parent run's headline numbers, each a fraction in [0, 1]:

    ``mean_<metric>/perplexity_<p>`` for every embedding metric (trustworthiness_<d>d, knn_acc_<d>d):
    the mean over models at perplexity p, with ``/ci_low`` and ``/ci_high`` (95 % over models) when
    there are several; ``knn_acc_<d>d/<model>/perplexity_<p>``: each model's leave-one-person-out
    k-NN accuracy in the embedding (``<model>``: ``train_seed_0``, or ``model_1`` where the seed is
    unknown); ``mean_knn_acc_features`` and ``mean_test_acc`` (mean over models; one model's
    perplexities share these) and ``knn_acc_features/<model>``.
    """
    runs = runs.assign(_model=runs["source_model"].fillna("model"))
    names = source_labels(list(runs["_model"]), list(runs["train_seed"]))
    runs["_model"] = runs["_model"].map(lambda source: names[source].replace(" ", "_"))
    metrics: dict[str, float] = {}
    for column in columns:
        if column in ("knn_acc_features", "test_acc"):  # the model's, whatever the perplexity
            per_model = runs.groupby("_model", sort=False)[column].mean().dropna()
            metrics.update(stats.mean_ci_metrics(f"mean_{column}", per_model, stats.ACCURACY_BOUNDS))
            if column == "knn_acc_features":
                metrics.update({f"{column}/{model}": float(value) for model, value in per_model.items()})
            continue
        for perplexity, group in runs.groupby("perplexity", sort=True):
            per_model = group.groupby("_model", sort=False)[column].mean().dropna()
            metrics.update(stats.mean_ci_metrics(f"mean_{column}/perplexity_{perplexity:g}", per_model, stats.ACCURACY_BOUNDS))
            if column.startswith("knn_acc_"):
                metrics.update({f"{column}/{model}/perplexity_{perplexity:g}": float(value) for model, value in per_model.items()})
    return metrics


def _mean_ci_cell(values: pd.Series) -> str:
    return summary_cell(stats.mean_ci(values.astype(float), bounds=stats.ACCURACY_BOUNDS))  # every t-SNE column is a fraction


def _side_by_side(table: TrialTable, marker_by: str) -> tuple[dict, int]:
    """Figures ``tsne_<d>d_by_perplexity.png`` of the first model's trials (sorted by source), in
    perplexity order; and how many trials had no embedding artifact."""
    sources = sorted(table.source_models())
    chosen = [r for r in table if not sources or r.source_model == sources[0]]
    loaded, missing = [], 0
    for record in sorted(chosen, key=lambda r: r.settings.perplexity):
        path = record.fetch(EMBEDDING_ARTIFACT)
        if path is None or not path.is_file():
            missing += 1
            continue
        with np.load(path, allow_pickle=False) as stored:
            loaded.append((record.settings.perplexity, {key: stored[key] for key in stored.files}))
    figures = {}
    if not loaded:
        return figures, missing
    classes = list(loaded[0][1]["classes"])
    for dims in (2, 3):
        panels = [
            {
                "coords": e[f"coords_{dims}d"],
                "labels": e["labels"],
                "groups": e["groups"] if e["groups"].size else None,
                "title": f"perplexity {p:g}",
            }
            for p, e in loaded
            if f"coords_{dims}d" in e
        ]
        if panels:
            figures[f"tsne_{dims}d_by_perplexity.png"] = embedding_plots.embedding_grid_figure(panels, classes, marker_by)
    return figures, missing


EXPERIMENT = Experiment(
    name="tsne",
    settings=Settings,
    evaluates_model=True,
    run=run,
    report=report,
    report_artifacts=(EMBEDDING_ARTIFACT,),
    summary_metrics=("trustworthiness_*", "knn_acc_*", "test_acc"),
)
