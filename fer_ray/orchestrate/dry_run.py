"""``--dry-run``: what a sweep would run, and the pre-flight checks it would pass, without starting
anything: no Ray, no MLflow run, no Tune folder, nothing fetched or trained.

It prints the trial plan (trials, what varies, resources per trial and how many at once), the training
stage an evaluation sweep needs (new, or reused with its MLflow run id), the pre-flight results
(preflight.py, with nothing built or fetched) and a time estimate taken from earlier finished trials of
the same sweep in the tracking store, or says there is none. Nothing here imports ray, mlflow or torch
(the local sqlite store is read with sqlite3: sqlite_store.py), so it answers in about a second.
"""

from __future__ import annotations

import math
import os

from fer_ray.core.formatting import epochs_text
from fer_ray.orchestrate.model_sources import TAG_TRAIN_HASH, training_hash
from fer_ray.orchestrate.plan import TrialPlan, trial_plan
from fer_ray.orchestrate.preflight import run_preflight
from fer_ray.orchestrate.resources import local_capacity, resolve_resources, resolved_spec
from fer_ray.orchestrate.spec import SweepSpec
from fer_ray.orchestrate.sqlite_store import finished_run_with_tag, median_trial_seconds, sqlite_path


def dry_run(spec: SweepSpec, num_cpus: int | None = None) -> str:
    """The plan and the pre-flight results as text (concurrency is counted on this machine's CPUs, or
    ``num_cpus``). Raises PreflightError (exit 2) as the sweep itself would."""
    cpus = float(num_cpus or os.cpu_count() or 1)
    capacity = local_capacity(num_cpus)
    resources = resolve_resources(spec, capacity)  # ResourcesUnavailable (a SpecError, exit 2) when none fit
    plan = trial_plan(resolved_spec(spec, resources), cpus, capacity)
    checks = run_preflight(spec, None, prepare=False)
    training = training_stage_lines(spec)
    lines = [
        f"Sweep {spec.name} ({spec.experiment}), profile {spec.profile}: {plan.n_trials} trials",
        f"  resources: {resources.describe()}  -> up to {plan.concurrent} at once on {capacity.node_list()}"
        " (a local Ray on this machine; --address counts the cluster's at start)",
        f"  data: {spec.data.dataset} at {spec.data.image_size} px, split by {spec.data.split.by}",
        f"  model: {spec.model.arch} (weights {spec.model.weights}), {epochs_text(spec.train.epochs, spec.train.images_per_epoch)}",
        "  varies:" if plan.varying else "  varies: nothing (one trial per seed)",
        *[f"    {key}: {values}" for key, values in plan.varying.items()],
        *[f"  {line}" for line in training],
        "  pre-flight (nothing built or fetched):",
        *[f"    ok  {line}" for line in checks],
        f"  {time_estimate(spec, plan)}",
        f"  tracking: {spec.tracking.uri} (experiment {spec.tracking.experiment}); storage: {spec.storage.path}",
        "Nothing was run (--dry-run).",
    ]
    return "\n".join(lines)


def training_stage_lines(spec: SweepSpec) -> list[str]:
    """For an evaluation sweep with ``source.model: train``: which training seeds have a finished
    training run with this recipe (reused: its run id) and which are trained first (new)."""
    if not (spec.evaluates_model and spec.source.model == "train"):
        return []
    seeds = spec.source.train_seeds
    database = sqlite_path(spec.tracking.uri)
    found: dict[int, str | None] = {}
    for seed in seeds:
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        found[seed] = (
            None if database is None else finished_run_with_tag(database, spec.tracking.experiment, TAG_TRAIN_HASH, training_hash(seeded))
        )
    if any(run is None for run in found.values()):
        return [f"training stage: whether train seeds {seeds} are trained already is checked at start (in {spec.tracking.uri})"]
    missing = [seed for seed, run in found.items() if not run]
    lines = [f"training stage: reused for train seed {seed}: MLflow run {run}" for seed, run in found.items() if run]
    if missing:
        lines.append(
            f"training stage: new: {spec.name}-train trains seed(s) {missing} first ({len(missing)} finetune "
            f"trial(s), {spec.train.epochs} epochs each), then the sweep evaluates every model"
        )
    return lines


def time_estimate(spec: SweepSpec, plan: TrialPlan) -> str:
    """The sweep's wall time from the median of its earlier finished trials in a local sqlite store
    (stated as such), or a line saying why there is no estimate."""
    database = sqlite_path(spec.tracking.uri)
    timed = median_trial_seconds(database, spec.tracking.experiment, spec.name) if database else None
    if timed is None:
        where = spec.tracking.uri if database else f"{spec.tracking.uri} (only a local sqlite store is read here)"
        return f"time: no estimate (no finished trial of sweep {spec.name} in {where} to time it by; a first run gives one)"
    median, count = timed
    waves = math.ceil(plan.n_trials / plan.concurrent)
    return (
        f"time: about {_duration(waves * median)} for the sweep's trials: {waves} round(s) of up to {plan.concurrent} "
        f"x median {_duration(median)} per trial, measured over {count} earlier finished trial(s) of {spec.name} in "
        f"{spec.tracking.uri} on whatever machine ran them (their settings may differ); the training stage, "
        f"if any, and start-up come on top"
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
