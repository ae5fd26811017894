"""What every experiment receives: the trial's configuration and a Reporter to publish results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from fer_ray.core.config import DataConfig, ModelConfig, TrainConfig


@dataclass(frozen=True)
class Trial:
    """The fully resolved configuration of one trial (grid / Optuna values already applied)."""

    sweep: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    #: the experiment's own settings (its Experiment.settings model, this trial's values applied)
    settings: BaseModel
    #: evaluation experiments: the trained model to evaluate (a fer_ray model file, local to the trial)
    model_file: Path | None = None
    #: where that model came from (an MLflow run id, models:/ URI or file path), for the record
    model_source: str | None = None


class Reporter(Protocol):
    """Where an experiment sends what it produces. The orchestrator implements it with Ray Tune
    (progress, checkpoints, early stopping) and MLflow (metrics, figures, artifacts); tests can use
    a plain in-memory one."""

    #: a private folder for this trial's files (checkpoints, model, figures before upload)
    work_dir: Path
    #: epochs between the checkpoints a training experiment writes (the last epoch always; 0: none):
    #: the sweep's failure.checkpoint_every
    checkpoint_every: int

    def epoch(self, metrics: dict[str, float], step: int, checkpoint: Path | None = None) -> None:
        """Per-epoch metrics (and the checkpoint file written for that epoch, if any)."""

    def figure(self, figure, name: str) -> None:
        """A matplotlib Figure, stored as ``name`` (a .png file name)."""

    def artifact(self, path: Path, folder: str | None = None) -> None:
        """A file produced by the trial, stored under ``folder``."""

    def tags(self, tags: dict[str, str]) -> None:
        """Facts about the run (dataset fingerprint, protocol, ...)."""

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint to continue from when the trial is retried or resumed, else None."""


class LocalReporter:
    """A Reporter that keeps everything in memory and on local disk: for running one experiment from
    Python (a notebook, a test) without Ray or MLflow."""

    def __init__(self, work_dir: Path, resume_from: Path | None = None, checkpoint_every: int = 1):
        self.work_dir = Path(work_dir)
        self.checkpoint_every = checkpoint_every
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[Path] = []
        self.figures: dict[str, Path] = {}
        #: the matplotlib Figures themselves, by file name (what a test reads the drawn text from)
        self.drawn: dict[str, object] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.tag_values: dict[str, str] = {}
        self._resume_from = resume_from

    def epoch(self, metrics: dict[str, float], step: int, checkpoint: Path | None = None) -> None:
        self.history.append((step, dict(metrics)))
        if checkpoint is not None:
            self.checkpoints.append(checkpoint)

    def figure(self, figure, name: str) -> None:
        path = self.work_dir / name
        figure.savefig(path, dpi=100, bbox_inches="tight")
        self.figures[name] = path
        self.drawn[name] = figure

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self.artifacts.append((Path(path), folder))

    def tags(self, tags: dict[str, str]) -> None:
        self.tag_values.update(tags)

    def resume_checkpoint(self) -> Path | None:
        return self._resume_from


def load_model_and_data(trial: Trial):
    """What every evaluation experiment starts from: the trained model (on the trial's device, eval
    mode) and the trial's prepared data (the same split as its training). Returns (FerNet, PreparedData).

    Raises ValueError when no model was given or when the model's classes differ from the data's.
    """
    # imported here: base.py stays importable (and cheap) for the orchestrator's type use
    from fer_ray.core.data.prepare import prepare_data
    from fer_ray.core.device import pick_device
    from fer_ray.core.model_file import load_model

    if trial.model_file is None:
        raise ValueError(f"sweep {trial.sweep}: this experiment evaluates a trained model; set source.model")
    model, classes = load_model(trial.model_file)
    data = prepare_data(trial.data)
    if tuple(classes) != tuple(data.dataset.classes):
        raise ValueError(
            f"model {trial.model_source or trial.model_file} predicts classes {list(classes)} but "
            f"data.dataset={trial.data.dataset!r} has {list(data.dataset.classes)}"
        )
    return model.to(pick_device()).eval(), data


def number_label(value: float) -> str:
    """A swept number as it appears in metric and tag names (MLflow-safe, shortest form):
    0.1 -> '0.1', 0 -> '0', 1e-05 -> '1e-05'. Used for noise variances and attack epsilons alike."""
    return f"{float(value):g}"
