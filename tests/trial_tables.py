"""Build a report's TrialTable in memory (no MLflow): for unit tests of experiments' report functions."""

from __future__ import annotations

from typing import Any

from fer_ray.experiments.results import TrialRecord, TrialStatus, TrialTable
from fer_ray.orchestrate.report import table_of
from fer_ray.orchestrate.spec import SweepSpec, trial_of, trial_spec


def record(
    spec: SweepSpec,
    values: dict[str, Any],
    metrics: dict[str, float],
    *,
    source_model: str | None = None,
    tags: dict[str, str] | None = None,
    status: TrialStatus = TrialStatus.FINISHED,
    run_id: str = "run",
) -> TrialRecord:
    """One trial of ``spec`` that varied ``values`` (dotted keys) and reported ``metrics``."""
    trial = trial_of(trial_spec(spec, values))
    return TrialRecord(
        run_id=run_id,
        run_name=run_id,
        status=status,
        trial=trial,
        values=values,
        metrics=metrics,
        tags=tags or {},
        source_model=source_model,
        train_seed=trial.train.seed,
    )


def table(spec: SweepSpec, records: list[TrialRecord]) -> TrialTable:
    return table_of(spec, records)
