"""What a report function receives: a typed table of a sweep's trials, built by the orchestrator.

The orchestrator reads the sweep's runs back from its tracking store and hands the experiment's
report function a :class:`TrialTable`; the report never sees how runs are stored (no MLflow column
or tag names, nothing parsed out of a metric name). Light on purpose: no pandas or matplotlib import
at module level (trial processes import this module through the experiment contract).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fer_ray.core.config import DataConfig
from fer_ray.experiments.base import Trial

#: ``fetch(artifact_path)`` -> a local copy of that artifact of one trial's run, or None when the run
#: has no such artifact. ``artifact_path`` must be one the experiment declares in ``report_artifacts``.
FetchArtifact = Callable[[str], "Path | None"]


class TrialStatus(str, enum.Enum):
    """How a trial ended."""

    FINISHED = "finished"  # ran to the end; its final metrics are complete
    STOPPED = "stopped"  # stopped early by the scheduler (ASHA): its metrics are those of its last epoch
    FAILED = "failed"  # raised, was lost with its node, or never finished


def _no_artifacts(artifact_path: str) -> Path | None:
    return None


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep as its report sees it.

    trial: the trial's resolved, typed configuration (data, model, train and the experiment's own
    ``settings`` model; ``model_source`` for evaluation sweeps). values: what this trial varied (the
    grid point or Optuna sample), dotted keys -> typed values (``{"train.seed": 1, "train.lr": 3e-4}``).
    metrics: name -> float (the names the trial returned and reported per epoch, latest value).
    tags: the facts the trial itself reported through ``Reporter.tags``. source_model: the model an
    evaluation trial evaluated (run URI, registry URI or path), None for training sweeps.
    train_seed: the seed that trained the model (training sweeps: trial.train.seed; evaluation
    sweeps: the source training run's seed when known). history: metric -> [(step, value)] for the
    metrics the experiment lists in ``history_metrics`` (e.g. val_acc per epoch).
    """

    run_id: str
    run_name: str
    status: TrialStatus
    trial: Trial
    values: Mapping[str, Any]
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)
    source_model: str | None = None
    train_seed: int | None = None
    history: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    fetch: FetchArtifact = field(default=_no_artifacts, compare=False, repr=False)

    @property
    def settings(self) -> BaseModel:
        """The experiment's settings of this trial (its pydantic model, this trial's values applied)."""
        return self.trial.settings

    def metric(self, name: str, default: float = float("nan")) -> float:
        return float(self.metrics.get(name, default))


@dataclass(frozen=True)
class TrialTable:
    """A sweep's trials, in the order they were started, with what the report needs of the sweep.

    settings: the sweep's base settings (the experiment's model before the grid is applied).
    settings_grid: the values the sweep's grid lists for the experiment's own settings, field name ->
    values in the order the sweep file gives them (``{"C": [1.0, 10.0]}``); grid: every grid key
    (dotted) -> its values. data: the sweep's data section (to redraw examples).
    """

    sweep: str
    experiment: str
    settings: BaseModel
    data: DataConfig
    records: tuple[TrialRecord, ...]
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    settings_grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[TrialRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def with_status(self, *statuses: TrialStatus) -> TrialTable:
        """The same table holding only the trials that ended with one of ``statuses``."""
        return TrialTable(
            self.sweep,
            self.experiment,
            self.settings,
            self.data,
            tuple(r for r in self.records if r.status in statuses),
            self.grid,
            self.settings_grid,
        )

    def finished(self) -> TrialTable:
        return self.with_status(TrialStatus.FINISHED)

    def source_models(self) -> list[str]:
        """The distinct source models in trial order (evaluation sweeps); [] for training sweeps."""
        return list(dict.fromkeys(r.source_model for r in self.records if r.source_model is not None))

    def frame(self, settings: Sequence[str] = ()):
        """A pandas DataFrame, one row per trial: run_id, run_name, status (str), source_model,
        train_seed, the named ``settings`` fields (typed values), then one column per metric (float,
        NaN where a trial lacks it). Column names are metric names as the trial reported them."""
        import pandas as pd  # here, not at import: trial processes import this module

        rows = []
        for record in self.records:
            row: dict[str, Any] = {
                "run_id": record.run_id,
                "run_name": record.run_name,
                "status": record.status.value,
                "source_model": record.source_model,
                "train_seed": record.train_seed,
            }
            row.update({name: getattr(record.settings, name) for name in settings})
            row.update({name: float(value) for name, value in record.metrics.items()})
            rows.append(row)
        columns = ["run_id", "run_name", "status", "source_model", "train_seed", *settings]
        return pd.DataFrame(rows, columns=None if rows else columns)


@dataclass(frozen=True)
class Report:
    """What a report function returns: its markdown section, figures (file name -> matplotlib
    Figure), and sweep-level metrics for the parent run (name -> float)."""

    markdown: str
    figures: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
