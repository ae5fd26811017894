"""The driver side of one sweep invocation: one plan, then Ray up, MLflow parent run(s), Tuner fit or
restore, report.

The plan (:func:`plan_sweep`) is made once, from the validated spec: which experiment, whether it
evaluates a trained model, and for an evaluation sweep which models already exist and which training
stage must run first. Each stage (the training stage, then the sweep) is one Tuner run with its own
parent run (:func:`run_stage`); nothing calls back into run_sweep.

MLflow is the registry of sweeps: the parent run carries the Tune experiment path and the resolved
spec, so ``--resume`` finds the latest unfinished run of a sweep from the tracking server alone.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from fer_ray.experiments import get_experiment
from fer_ray.experiments.contract import Experiment
from fer_ray.orchestrate.cluster import (
    check_storage_for_cluster,
    check_tracking_for_cluster,
)
from fer_ray.orchestrate.console import quiet_console, ray_logging_level, set_verbose, summary_table
from fer_ray.orchestrate.mlflow_model import register_best
from fer_ray.orchestrate.model_sources import (
    check_source,
    find_models,
    model_sources,
    training_spec,
)
from fer_ray.orchestrate.spec import SweepSpec, rename_old_keys
from fer_ray.orchestrate.tracking import (
    ROLE_PARENT,
    TAG_NOTE,
    TAG_ROLE,
    TAG_STOPPED_EARLY,
    TAG_SWEEP,
    Tracker,
    tag_filter,
)
from fer_ray.orchestrate.trial import TRIAL_FINISHED, run_name, trial_key
from fer_ray.orchestrate.tune import (
    build_tuner,
    set_tune_environment,
    trainable,
    trial_plan,
)
from fer_ray.orchestrate.weights import prefetch_weights

SPEC_ARTIFACT = "spec.json"


class SweepFailed(RuntimeError):
    """The sweep could not start or resume; the message says why and what to do."""


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    tracking_uri: str
    tune_path: str
    report_dir: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    experiment_id: str | None = None
    #: the experiment kind: its summary metrics are the table's columns
    experiment: str = "finetune"

    @property
    def all_succeeded(self) -> bool:
        return not self.interrupted and all(row["status"] != "error" for row in self.rows)

    def summary(self) -> str:
        """The end-of-sweep table (each trial by its MLflow run name, with the experiment's summary
        metrics: console.summary_table) and where everything is."""
        lines = [f"\nSweep {self.name}: {len(self.rows)} trials", *summary_table(self.rows, get_experiment(self.experiment))]
        lines += [
            "",
            f"MLflow parent run: {self.parent_run_id}  ({self.tracking_uri})",
            *ui_hint(self.tracking_uri, self.experiment_id),
            f"Tune state:        {self.tune_path}",
        ]
        if self.report_dir is not None:
            lines.append(f"Report:            {self.report_dir}/report.md")
        if self.interrupted:
            lines.append("Interrupted: finish it with  python -m fer_ray.sweep <this sweep file> --resume")
        return "\n".join(lines)


#: MLflow 3's UI opens an experiment in its GenAI view unless the page asks for the model-training one
#: (the ``workflowType`` query; the ``mlflow.experimentKind`` tag alone does not switch it in 3.x).
UI_VIEW_QUERY = "?workflowType=machine_learning"


def ui_hint(tracking_uri: str, experiment_id: str | None) -> list[str]:
    """How to look at the sweep in the MLflow UI, as lines that work as typed: the ``mlflow`` of this
    Python (``.venv/bin/mlflow`` when the venv is not activated) and the page of the experiment's runs
    in the model-training view."""
    page = f"#/experiments/{experiment_id}/runs{UI_VIEW_QUERY}" if experiment_id else f"#/{UI_VIEW_QUERY}"
    if tracking_uri.startswith(("http://", "https://")):
        return [f"  compare trials:  open {tracking_uri}/{page}"]
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    command = "mlflow" if shutil.which("mlflow") == str(mlflow_exe) else _relative(mlflow_exe)
    return [
        f"  compare trials:  {command} ui --backend-store-uri {tracking_uri}",
        f"                   then open http://127.0.0.1:5000/{page}",
    ]


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def absolute_storage(path: str) -> str:
    """Tune needs an absolute local path or a URI (file://, s3://, gs://)."""
    return path if "://" in path else str(Path(path).resolve())


def experiment_path(storage: str, run_name: str) -> str:
    """Where Tune keeps the sweep's state: ``run_name`` under ``storage`` (a local path or a URI).
    A URI's query stays at the end: s3://b/p?endpoint_override=h -> s3://b/p/<run>?endpoint_override=h."""
    if "://" not in storage:
        return str(Path(storage) / run_name)
    parts = urllib.parse.urlsplit(storage)
    return urllib.parse.urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{run_name}"))


def tracker_for(spec: SweepSpec) -> Tracker:
    """The sweep's MLflow target (a relative sqlite path becomes absolute, so workers agree)."""
    return Tracker(uri=spec.tracking.uri, experiment=spec.tracking.experiment)


def dry_run(spec: SweepSpec, num_cpus: int | None = None) -> str:
    """The trial plan as text; starts nothing (concurrency is counted on this machine's CPUs, or
    ``num_cpus``)."""
    cpus = float(num_cpus or os.cpu_count() or 1)
    plan = trial_plan(spec, cpus)
    lines = [
        f"Sweep {spec.name} ({spec.experiment}), profile {spec.profile}: {plan.n_trials} trials",
        f"  resources per trial: {plan.resources['cpu']:g} CPU, {plan.resources['gpu']:g} GPU"
        f"  -> up to {plan.concurrent} at once on {cpus:g} local CPUs",
        f"  data: {spec.data.dataset} at {spec.data.image_size} px, split by {spec.data.split.by}",
        f"  model: {spec.model.arch} (weights {spec.model.weights}), {spec.train.epochs} epochs",
        "  varies:",
        *[f"    {key}: {values}" for key, values in plan.varying.items()],
        f"  rough cost: {plan.rough_cost}",
        f"  tracking: {spec.tracking.uri} (experiment {spec.tracking.experiment}); storage: {spec.storage.path}",
        "Nothing was run (--dry-run).",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class SweepPlan:
    """What one invocation runs, decided once. sweep: the validated spec; experiment: its
    Experiment; training: the fine-tuning stage that must run first (evaluation sweeps whose models
    are not all trained yet), else None; models: train seed -> model source already available
    (evaluation sweeps with ``source.model: train``)."""

    sweep: SweepSpec
    experiment: Experiment
    training: SweepSpec | None = None
    models: dict[int, str | None] = field(default_factory=dict)


def plan_sweep(spec: SweepSpec, experiment: Experiment, tracker: Tracker) -> SweepPlan:
    """The plan of a fresh (not resumed) sweep; looks up finished training runs in ``tracker``."""
    if not experiment.evaluates_model or spec.source.model != "train":
        return SweepPlan(spec, experiment)
    models = find_models(spec, tracker)
    missing = [seed for seed, source in models.items() if source is None]
    return SweepPlan(spec, experiment, training_spec(spec, missing) if missing else None, models)


def run_sweep(spec: SweepSpec, address: str | None = None, resume: bool = False, num_cpus: int | None = None,
              verbose: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep end to end and write its report: the training stage first when
    the plan has one, then the sweep over every model. verbose: Ray Tune's status tables and the INFO
    logs of Ray and MLflow beside the sweep's console (fer_ray.orchestrate.console)."""
    set_verbose(verbose)
    quiet_console()  # before anything logs (MLflow's schema migration, Ray's start)
    tracker = tracker_for(spec)
    experiment = get_experiment(spec.experiment)
    if experiment.evaluates_model:
        check_source(spec, tracker)  # before Ray starts
    prefetch_weights(spec)
    _start_ray_and_tracking(tracker, address, num_cpus)
    nodes = ray.nodes()  # a multi-machine cluster needs storage and tracking every node can reach
    check_storage_for_cluster(spec.storage.path, nodes)
    check_tracking_for_cluster(tracker.uri, nodes)
    if resume:
        return run_stage(*_find_resumable(spec, tracker), tracker)
    plan = plan_sweep(spec, experiment, tracker)
    sweep = plan.sweep
    if plan.training is not None:
        print(f"Training stage: {plan.training.name} ({len(plan.training.search.seeds)} model(s); reused later by hash)")
        outcome = run_stage(plan.training, None, None, tracker)
        print(outcome.summary())
        if not outcome.all_succeeded:
            raise SweepFailed(f"training stage {plan.training.name} did not finish; its runs are under parent {outcome.parent_run_id}")
    if plan.experiment.evaluates_model:
        found = find_models(spec, tracker) if plan.training is not None else plan.models
        grid = {"source.model": model_sources(spec, found, tracker), **spec.search.grid}
        sweep = spec.model_copy(update={"search": spec.search.model_copy(update={"grid": grid})})
    return run_stage(sweep, None, None, tracker)


def run_stage(spec: SweepSpec, parent_id: str | None, tune_path: str | None, tracker: Tracker) -> SweepOutcome:
    """One Tuner run of ``spec`` under its own parent run: fit (or, given a parent run and its Tune
    path, restore), close the runs Tune left open, report. Ray and MLflow are up."""
    if parent_id is None:
        storage = absolute_storage(spec.storage.path)
        name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tune_path = experiment_path(storage, name)
        parent_id = _open_parent(spec, tracker, name, tune_path)
        tuner = build_tuner(spec, tracker, parent_id, storage, name)
    else:
        tuner = tune.Tuner.restore(tune_path, trainable(spec, tracker, parent_id), resume_errored=True)
    _import_in_background("fer_ray.orchestrate.report")
    results = tuner.fit()
    rows = [_row(result, spec) for result in results]
    if was_interrupted(tune_path):
        tracker.finish(parent_id, "KILLED")
        return SweepOutcome(spec.name, parent_id, tracker.uri, tune_path, None, rows, interrupted=True, experiment_id=tracker.experiment_id(),
                            experiment=spec.experiment)
    _close_open_runs(results, tracker, parent_id)
    from fer_ray.orchestrate.report import write_report

    report_dir = write_report(spec, tracker, parent_id, Path("reports") / spec.name)
    if spec.register:
        print(register_best(tracker, parent_id, spec.register))
    tracker.finish(parent_id, "FINISHED" if all(r["status"] != "error" for r in rows) else "FAILED")
    return SweepOutcome(spec.name, parent_id, tracker.uri, tune_path, report_dir, rows, experiment_id=tracker.experiment_id(),
                        experiment=spec.experiment)


def _start_ray_and_tracking(tracker: Tracker, address: str | None, num_cpus: int | None) -> None:
    """Start (or join) Ray and open the MLflow experiment at the same time; raise if either fails.

    Both are start-up costs of every sweep: a local Ray takes ~3 s on 2 cores, and MLflow's first
    connection to a new sqlite file runs its schema migrations (~2 s). The driver mostly waits on
    Ray's processes, so the migrations fit in that wait. A TrackingError (e.g. an unreachable server)
    still comes before any trial runs.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fer_ray-tracking") as pool:
        tracking_ready = pool.submit(tracker.check)
        _start_ray(address, num_cpus)
        tracking_ready.result()


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    set_tune_environment()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=ray_logging_level())
    else:
        # address="local": always a new local Ray, never one another process happens to run here
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=ray_logging_level())


def _import_in_background(module: str) -> None:
    """Import ``module`` on a daemon thread. The driver mostly waits while trials run, so the report's
    plotting and statistics stack (matplotlib, scipy, scikit-learn: ~1.2 s) loads then rather than
    after the last trial. A later ``import`` of the same module waits for this one (import lock)."""
    threading.Thread(target=importlib.import_module, args=(module,), name=f"import {module}", daemon=True).start()


def _open_parent(spec: SweepSpec, tracker: Tracker, run_name: str, tune_path: str) -> str:
    """The sweep's parent run: tags to find it again (--resume) and the resolved spec as spec.json."""
    parent_id = tracker.parent_run(
        spec.name,
        sweep_id=run_name,
        tags={
            "fer_ray.tune_path": tune_path,
            "fer_ray.experiment": spec.experiment,
            "fer_ray.profile": spec.profile,
            "fer_ray.protocol": spec.data.split.protocol,
            TAG_NOTE: spec.description.strip(),
        },
        params=varied_params(spec),
    )
    tracker.log_spec(parent_id, spec.model_dump(mode="json"), SPEC_ARTIFACT)
    return parent_id


def varied_params(spec: SweepSpec) -> dict[str, str]:
    """What the sweep varies, for its parent run's params: each grid key with its values (JSON list);
    the seeds (``train.seed`` of a training sweep; an evaluation sweep's models, ``source.model`` in
    its grid, and ``source.train_seeds`` when it trains them); for Optuna each searched key with its
    distribution (JSON, e.g. ``{"loguniform": [0.0003, 0.005]}``) and the number of samples."""
    if get_experiment(spec.experiment).evaluates_model:
        varied: dict[str, Any] = {"source.train_seeds": spec.source.train_seeds} if spec.source.model == "train" else {}
    else:
        varied = {"train.seed": spec.search.seeds}
    varied.update(spec.search.grid)
    if spec.search.optuna is not None:
        space = spec.search.optuna.model_dump(mode="json", exclude_none=True)["space"]
        varied.update({key: json.dumps(distribution, sort_keys=True) for key, distribution in space.items()})
        varied["optuna.num_samples"] = spec.search.optuna.num_samples
    return {key: value if isinstance(value, (str, int)) else json.dumps(value, default=str) for key, value in varied.items()}


def _find_resumable(spec: SweepSpec, tracker: Tracker) -> tuple[SweepSpec, str, str]:
    """The latest parent run of this sweep that did not finish, its stored spec and Tune path."""
    runs = tracker.find_runs(f"{tag_filter(TAG_ROLE, ROLE_PARENT)} and {tag_filter(TAG_SWEEP, spec.name)}")
    unfinished = [r for r in runs if r.info.status != "FINISHED"]
    if not unfinished:
        raise SweepFailed(
            f"--resume: no unfinished run of sweep {spec.name!r} in {tracker.uri} "
            f"(experiment {tracker.experiment}); run it without --resume"
        )
    latest = max(unfinished, key=lambda r: r.info.start_time)
    tune_path = latest.data.tags["fer_ray.tune_path"]
    if not tune.Tuner.can_restore(tune_path):
        raise SweepFailed(f"--resume: Tune state {tune_path} of run {latest.info.run_id} cannot be restored (missing or incomplete)")
    with tempfile.TemporaryDirectory() as folder:
        stored = tracker.download_artifact(latest.info.run_id, SPEC_ARTIFACT, Path(folder))
        spec = SweepSpec.model_validate(rename_old_keys(json.loads(Path(stored).read_text()), f"run {latest.info.run_id} {SPEC_ARTIFACT}"))
    return spec, latest.info.run_id, tune_path


def was_interrupted(tune_path: str) -> bool:
    """True when Tune stopped on Ctrl-C (SIGINT) with trials left to run.

    After an interrupt Tune marks every trial TERMINATED in memory, so the returned ResultGrid cannot
    tell an interrupted trial from one that ASHA stopped; the experiment state Tune saved can: there
    the unfinished trials are still PENDING or RUNNING.
    """
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about every trial that never wrote a result
    try:
        saved = tune.ExperimentAnalysis(tune_path)
    finally:
        quiet.setLevel(level)
    return any(trial.status not in ("TERMINATED", "ERROR") for trial in saved.trials)


def _close_open_runs(results, tracker: Tracker, parent_id: str) -> None:
    """Close the child runs their trials left open: FAILED for an error, KILLED + tag
    ``fer_ray.stopped_early`` for a trial the scheduler (ASHA) stopped."""
    children = tracker.children(parent_id)
    if children.empty:
        return
    open_runs = children[children["status"] != "FINISHED"].set_index("tags.fer_ray.trial_key")["run_id"]
    for result in results:
        run_id = open_runs.get(trial_key(result.config or {}))
        if run_id is None:
            continue
        if result.error is not None:
            tracker.finish(run_id, "FAILED")
        else:
            tracker.set_tags(run_id, {TAG_STOPPED_EARLY: "true"})
            tracker.finish(run_id, "KILLED")


def _row(result, spec: SweepSpec) -> dict[str, Any]:
    """A trial's line in the end-of-sweep summary. "done": the trial reported TRIAL_FINISHED (Tune's
    own ``done`` is also set on a trial the scheduler stopped, so it cannot tell them apart)."""
    metrics = dict(result.metrics or {})
    status = "error" if result.error is not None else "done" if metrics.get(TRIAL_FINISHED) else "stopped" if metrics else "not run"
    return {"name": run_name(result.config or {}, spec), "status": status, "metrics": metrics}
