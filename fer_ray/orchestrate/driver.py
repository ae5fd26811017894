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
import posixpath
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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
    find_models,
    model_sources,
    training_spec,
)
from fer_ray.orchestrate.preflight import run_preflight
from fer_ray.orchestrate.resources import (
    TAG_RESOURCES,
    ClusterCapacity,
    ray_capacity,
    resolve_resources,
    resolved_spec,
    resources_tag,
)
from fer_ray.orchestrate.spec import SpecError, SweepSpec, grid_points, rename_old_keys
from fer_ray.orchestrate.tracking import (
    ROLE_PARENT,
    TAG_NOTE,
    TAG_ROLE,
    TAG_STOPPED_EARLY,
    TAG_SWEEP,
    Tracker,
    flatten,
    tag_filter,
)
from fer_ray.orchestrate.trial import TRIAL_FINISHED, TRIAL_INPUT_ERROR, drop_fit_checkpoint, run_name, trial_key
from fer_ray.orchestrate.tune import (
    build_tuner,
    set_tune_environment,
    trainable,
)

SPEC_ARTIFACT = "spec.json"
#: the parent run's tag holding where Tune keeps the sweep's state (what --resume restores)
TAG_TUNE_PATH = "fer_ray.tune_path"


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
    #: True for an evaluation sweep's training stage: it is finished by running the sweep again (the
    #: models that finished are found by their recipe's hash and reused), not by --resume
    training_stage: bool = False

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
        if self.interrupted and self.training_stage:
            lines.append(
                "Interrupted in the training stage: run the same command again (without --resume); the models "
                "that finished are reused, the others are trained"
            )
        elif self.interrupted:
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


def run_sweep(
    spec: SweepSpec, address: str | None = None, resume: bool = False, num_cpus: int | None = None, verbose: bool = False
) -> SweepOutcome:
    """Run (or resume) the sweep end to end and write its report: the training stage first when
    the plan has one, then the sweep over every model. verbose: Ray Tune's status tables and the INFO
    logs of Ray and MLflow beside the sweep's console (fer_ray.orchestrate.console)."""
    set_verbose(verbose)
    quiet_console()  # before anything logs (MLflow's schema migration, Ray's start)
    tracker = tracker_for(spec)
    experiment = get_experiment(spec.experiment)
    for line in run_preflight(spec, tracker):  # before Ray starts, any MLflow run or Tune folder: bad input exits 2
        print(f"pre-flight: {line}")
    _start_ray_and_tracking(tracker, address, num_cpus)
    nodes = ray.nodes()  # a multi-machine cluster needs storage and tracking every node can reach
    check_storage_for_cluster(spec.storage.path, nodes)
    check_tracking_for_cluster(tracker.uri, nodes)
    capacity = ray_capacity()  # gpu: auto resolved, a request no node can meet refused: before any trial
    if resume:
        stored, parent_id, tune_path = _find_resumable(spec, tracker)
        return run_stage(_with_cluster_resources(stored, capacity), parent_id, tune_path, tracker)
    spec = _with_cluster_resources(spec, capacity)
    plan = plan_sweep(spec, experiment, tracker)
    sweep = plan.sweep
    if plan.training is not None:
        print(f"Training stage: {plan.training.name} ({len(plan.training.search.seeds)} model(s); reused later by hash)")
        outcome = run_stage(plan.training, None, None, tracker)
        if outcome.interrupted:  # Ctrl-C: the caller prints the summary and exits 130
            return replace(outcome, training_stage=True)
        print(outcome.summary())
        if not outcome.all_succeeded:
            raise SweepFailed(f"training stage {plan.training.name} did not finish; its runs are under parent {outcome.parent_run_id}")
    if plan.experiment.evaluates_model:
        found = find_models(spec, tracker) if plan.training is not None else plan.models
        grid = {"source.model": model_sources(spec, found, tracker), **spec.search.grid}
        sweep = spec.model_copy(update={"search": spec.search.model_copy(update={"grid": grid})})
    return run_stage(sweep, None, None, tracker)


def _with_cluster_resources(spec: SweepSpec, capacity: ClusterCapacity) -> SweepSpec:
    """``spec`` with the resources its trials get on ``capacity`` (printed); ResourcesUnavailable if none fit."""
    resources = resolve_resources(spec, capacity)
    print(f"Resources: {resources.describe()}")
    return resolved_spec(spec, resources)


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
    tuner.fit()
    trials = saved_trials(tune_path)
    started = _close_open_runs(trials, tracker, parent_id)
    rows = [_row(trial, started, spec) for trial in trials] + _unscheduled_rows(spec, trials)
    if was_interrupted(trials):
        tracker.finish(parent_id, "KILLED")
        return SweepOutcome(
            spec.name,
            parent_id,
            tracker.uri,
            tune_path,
            None,
            rows,
            interrupted=True,
            experiment_id=tracker.experiment_id(),
            experiment=spec.experiment,
        )
    from fer_ray.orchestrate.report import write_report

    try:
        report_dir = write_report(spec, tracker, parent_id, _emptied(Path("reports") / spec.name))
        if spec.register:
            print(register_best(tracker, parent_id, spec.register))
    except KeyboardInterrupt:  # Ctrl-C after the trials, while the report is written: --resume writes it
        tracker.finish(parent_id, "KILLED")
        raise
    tracker.finish(parent_id, "FINISHED" if all(r["status"] != "error" for r in rows) else "FAILED")
    return SweepOutcome(
        spec.name, parent_id, tracker.uri, tune_path, report_dir, rows, experiment_id=tracker.experiment_id(), experiment=spec.experiment
    )


def _emptied(folder: Path) -> Path:
    """``folder``, removed with everything in it: a sweep's report folder starts empty, so files an
    earlier run left there are never uploaded to this run's parent (write_report logs the whole folder)."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    return folder


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
            TAG_TUNE_PATH: tune_path,
            "fer_ray.experiment": spec.experiment,
            "fer_ray.profile": spec.profile,
            "fer_ray.protocol": spec.data.split.protocol,
            TAG_RESOURCES: resources_tag(spec),
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


class ResumeRefused(SpecError):
    """``--resume`` cannot continue this sweep as asked (nothing started); the message says why and what
    to do. A SpecError: the command line answers it with exit status 2."""


def _find_resumable(spec: SweepSpec, tracker: Tracker) -> tuple[SweepSpec, str, str]:
    """The latest parent run of this sweep that did not finish, its stored spec and Tune path.

    ``spec`` is the sweep as this command gives it. Refused (ResumeRefused): a Tune path outside the
    storage ``spec`` configures (restoring unpickles Tune's files from there, and the path comes from
    an MLflow tag anyone with access to the tracking server can set), and a sweep file, ``--profile``
    or ``--set`` that now says otherwise than the stored spec (a resumed sweep keeps the spec it
    started with).
    """
    runs = tracker.find_runs(f"{tag_filter(TAG_ROLE, ROLE_PARENT)} and {tag_filter(TAG_SWEEP, spec.name)}")
    unfinished = [r for r in runs if r.info.status != "FINISHED"]
    if not unfinished:
        raise SweepFailed(
            f"--resume: no unfinished run of sweep {spec.name!r} in {tracker.uri} "
            f"(experiment {tracker.experiment}); run it without --resume"
        )
    latest = max(unfinished, key=lambda r: r.info.start_time)
    run_id = latest.info.run_id
    tune_path = latest.data.tags.get(TAG_TUNE_PATH, "")
    storage = absolute_storage(spec.storage.path)
    if not inside_storage(tune_path, storage):
        raise ResumeRefused(
            f"--resume: run {run_id} of sweep {spec.name!r} keeps its Tune state at {tune_path!r} (tag {TAG_TUNE_PATH}), "
            f"which is not inside the configured storage {storage} (storage.path / --storage). Nothing was restored: "
            "restoring unpickles files from that folder. If it is yours, pass --storage with the folder that holds it"
        )
    if not tune.Tuner.can_restore(tune_path):
        raise SweepFailed(f"--resume: Tune state {tune_path} of run {run_id} cannot be restored (missing or incomplete)")
    with tempfile.TemporaryDirectory() as folder:
        stored = tracker.download_artifact(run_id, SPEC_ARTIFACT, Path(folder))
        stored_spec = SweepSpec.model_validate(rename_old_keys(json.loads(Path(stored).read_text()), f"run {run_id} {SPEC_ARTIFACT}"))
    changed = changed_on_resume(spec, stored_spec)
    if changed:
        raise ResumeRefused(
            f"--resume: sweep {spec.name!r} resumes with the spec it started with ({SPEC_ARTIFACT} of run {run_id}), "
            f"but the sweep file, --profile or --set now say otherwise: {'; '.join(changed)}. "
            "Drop those changes to resume, or run without --resume to start a new sweep with them"
        )
    return stored_spec, run_id, tune_path


def changed_on_resume(given: SweepSpec, stored: SweepSpec) -> list[str]:
    """Where ``given`` (this command's spec) differs from ``stored`` (the resumed run's), as
    ``key: started with A, now B`` lines. Not compared: tracking and storage (where the sweep is found;
    the same places may be written differently) and keys only the stored spec has (the driver adds an
    evaluation sweep's models to its grid as ``source.model``), nor ``resources.gpu: auto`` against the
    share it was resolved to at start."""
    now = flatten(given.model_dump(mode="json"))
    before = flatten(stored.model_dump(mode="json"))
    return [
        f"{key}: started with {before.get(key)!r}, now {value!r}"
        for key, value in now.items()
        if not key.startswith(("tracking.", "storage.")) and before.get(key) != value and not (key == "resources.gpu" and value == "auto")
    ]


def inside_storage(tune_path: str, storage: str) -> bool:
    """True when ``tune_path`` lies strictly inside ``storage`` (a local path or URI, e.g. s3://bucket/p):
    same scheme, host and query (an s3 ``endpoint_override`` names the server), and a path below the
    storage's path once ``..`` and, locally, symbolic links are resolved."""
    path, root = _location(tune_path), _location(storage)
    return path[:3] == root[:3] and path[3].startswith(root[3].rstrip("/") + "/")


def _location(path_or_uri: str) -> tuple[str, str, str, str]:
    """(scheme, host, query, normalised path); a plain path and a file:// URI are both ("file", "", "", path)."""
    if "://" not in path_or_uri:
        return "file", "", "", str(Path(path_or_uri).resolve())
    parts = urllib.parse.urlsplit(path_or_uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and not parts.query:
        return "file", "", "", str(Path(urllib.parse.unquote(parts.path)).resolve())
    return parts.scheme, parts.netloc, parts.query, posixpath.normpath(parts.path or "/")


def saved_trials(tune_path: str) -> list:
    """Every trial of the Tune experiment at ``tune_path`` as Tune saved it last (``ray.tune``'s Trial:
    config = its flat dotted values, status, last_result), in the order Tune created them (a grid's
    order, an Optuna search's sampling order; the saved state lists them in no fixed order).

    After an interrupt Tune marks every trial TERMINATED in memory, and the ResultGrid of a trial that
    never reported has no config; the saved state has both: there the unfinished trials are still
    PENDING or RUNNING (a trial running at the interrupt is saved as PENDING).
    """
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about every trial that never wrote a result
    try:
        return sorted(tune.ExperimentAnalysis(tune_path).trials, key=_creation_index)
    finally:
        quiet.setLevel(level)


def _creation_index(trial) -> int:
    """The count Tune gave ``trial`` when it created it: the head of its experiment tag
    (``"3_model.arch=resnet50,..."``; a searcher's trial ids are random, a grid's are not)."""
    head = str(trial.experiment_tag).split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def was_interrupted(trials: list) -> bool:
    """True when Tune stopped on Ctrl-C (SIGINT) with trials left to run (``trials``: saved_trials())."""
    return any(trial.status not in ("TERMINATED", "ERROR") for trial in trials)


def _close_open_runs(trials: list, tracker: Tracker, parent_id: str) -> set[str]:
    """Close every child run its trial left open: FAILED for an error; KILLED + tag
    ``fer_ray.stopped_early`` for a trial the scheduler (ASHA) stopped; KILLED for a trial an interrupt
    (Ctrl-C) stopped while it ran, and for any other run still open (Tune is done with every trial).
    Returns the trial keys that have a child run: the trials that started."""
    children = tracker.children(parent_id)
    if children.empty:
        return set()
    keys = children["tags.fer_ray.trial_key"]
    open_runs = children[children["status"] != "FINISHED"].set_index("tags.fer_ray.trial_key")["run_id"]
    trial_of = {trial_key(trial.config or {}): trial for trial in trials}
    for key, run_id in open_runs.items():
        trial = trial_of.get(key)
        status = trial.status if trial is not None else None
        if status == "ERROR" or (trial is not None and TRIAL_INPUT_ERROR in (trial.last_result or {})):
            tracker.finish(run_id, "FAILED")
            continue
        if status == "TERMINATED":
            tracker.set_tags(run_id, {TAG_STOPPED_EARLY: "true"})
            drop_fit_checkpoint(trial)  # it never runs again: its weights and optimizer state go
        tracker.finish(run_id, "KILLED")
    return set(keys.dropna())


def _row(trial, started: set[str], spec: SweepSpec) -> dict[str, Any]:
    """A trial's line in the end-of-sweep summary, named like its MLflow run. "done": the trial reported
    TRIAL_FINISHED (Tune's own ``done`` is also set on a trial the scheduler stopped, so it cannot tell
    them apart); "stopped": the scheduler stopped it; after an interrupt "killed" when it had started
    (its run in ``started``), else "not run"."""
    config = trial.config or {}
    metrics = dict(trial.last_result or {})
    if trial.status == "ERROR" or TRIAL_INPUT_ERROR in metrics:  # an exception, or bad input (never retried)
        status = "error"
    elif metrics.get(TRIAL_FINISHED):
        status = "done"
    elif trial.status == "TERMINATED":
        status = "stopped"
    else:
        status = "killed" if trial_key(config) in started else "not run"
    return {"name": run_name(config, spec), "status": status, "metrics": metrics}


def _unscheduled_rows(spec: SweepSpec, trials: list) -> list[dict[str, Any]]:
    """Summary lines ("not run") for the trials of the sweep that Tune had not created when it stopped
    (an interrupt): a grid sweep's missing grid points by name, an Optuna sweep's samples not yet drawn."""
    if spec.search.optuna is not None:
        missing = spec.search.optuna.num_samples - len(trials)
        return [{"name": "(not sampled yet)", "status": "not run", "metrics": {}}] * max(missing, 0)
    created = {trial_key(trial.config or {}) for trial in trials}
    return [
        {"name": run_name(point, spec), "status": "not run", "metrics": {}}
        for point in grid_points(spec)
        if trial_key(point) not in created
    ]
