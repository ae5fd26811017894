"""What a sweep will run, decided from its spec alone (no Ray, no MLflow, no torch): the number of
trials, what varies, the resources each trial asks for and how many run at once. ``--dry-run`` prints
it (dry_run.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fer_ray.orchestrate.resources import ClusterCapacity, Resources, concurrent_trials
from fer_ray.orchestrate.spec import SweepSpec, grid_points


@dataclass(frozen=True)
class TrialPlan:
    """n_trials: trials of the sweep itself (a training stage it needs first is not counted);
    varying: key -> the values it takes (Optuna: its distribution); resources: cpu and gpu per trial;
    concurrent: trials at once on ``total_cpus`` CPUs, or on ``capacity`` when given (and search.max_concurrent)."""

    n_trials: int
    varying: dict[str, list[Any]]
    resources: dict[str, float]
    concurrent: int


def trial_plan(spec: SweepSpec, total_cpus: float, capacity: ClusterCapacity | None = None) -> TrialPlan:
    """Number of trials, what varies, resources per trial (resolved: no 'auto') and how many run at once:
    on ``capacity`` when given (CPUs and GPUs per node), else on ``total_cpus``."""
    if spec.search.optuna is None and spec.evaluates_model:
        n_models = len(spec.source.train_seeds) if spec.source.model == "train" else 1
        n_trials = len(grid_points(spec)) * n_models
        varying = {**spec.search.grid, "source.model": [f"{spec.source.model} (train seeds {spec.source.train_seeds})"]}
    elif spec.search.optuna is None:
        n_trials = len(grid_points(spec))
        varying = {**spec.search.grid, "train.seed": spec.search.seeds}
    else:
        n_trials = spec.search.optuna.num_samples
        varying = {k: [v.model_dump(exclude_none=True)] for k, v in spec.search.optuna.space.items()}
    varying = {k: v for k, v in varying.items() if len(v) > 1 or spec.search.optuna}
    concurrent = max(1, int(total_cpus // spec.resources.cpu))
    if capacity is not None:
        concurrent = concurrent_trials(Resources(spec.resources.cpu, float(spec.resources.gpu), ""), capacity)
    if spec.search.max_concurrent:
        concurrent = min(concurrent, spec.search.max_concurrent)
    return TrialPlan(
        n_trials=n_trials, varying=varying, resources={"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}, concurrent=concurrent
    )
