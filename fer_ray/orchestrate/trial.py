"""What runs inside one Ray Tune trial: resolve its spec, open its MLflow child run, run the experiment.

The child run is created here, inside the trial, so artifacts upload from the node that made them
(Ray's MLflowLoggerCallback does not nest runs and loses worker artifacts: ray#19909, ray#46569).
A retried or resumed trial has the same trial key and so finds and reuses its run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow.artifacts
import pyarrow.fs
import ray
from mlflow.entities import Run
from ray import tune

from fer_ray.core.errors import InputError
from fer_ray.experiments import get_experiment
from fer_ray.orchestrate.mlflow_model import (
    MODEL_DIR,
    WEIGHTS,
    download_registered,
    log_pyfunc,
    resolve_registered,
    weights_file,
)
from fer_ray.orchestrate.model_sources import TAG_TRAIN_HASH, training_hash
from fer_ray.orchestrate.resources import TAG_RESOURCES, resources_tag
from fer_ray.orchestrate.spec import SweepSpec, trial_of, trial_spec
from fer_ray.orchestrate.tracking import (
    TAG_PARENT,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_RUN,
    TAG_TRIAL_KEY,
    TAG_TRIAL_VALUES,
    Tracker,
    flatten,
    tag_filter,
)

CHECKPOINT_FILE = "checkpoint.pt"
#: The file of a finished trial's last Tune checkpoint: its final report. By then the trained model is
#: in MLflow, so this small file replaces the fit checkpoint Tune kept while the trial ran (weights
#: and optimizer state; CheckpointConfig(num_to_keep=1) deletes it), and a trial Tune restores from
#: it (a driver lost between the report and Tune's record of it) reports again without rerunning.
FINISHED_FILE = "finished.json"
#: the key of a trial's last Tune report that says it ran to the end. Not Tune's own ``done``: Tune
#: also sets that on the last result of a trial its scheduler (ASHA) stopped.
TRIAL_FINISHED = "trial_finished"
#: the key of the last Tune report of a trial stopped by bad input (core.errors.InputError: data,
#: weights, model file, spec): its one-line message. Also the tag on its (FAILED) MLflow run.
TRIAL_INPUT_ERROR = "input_error"
TAG_INPUT_ERROR = "fer_ray.input_error"


#: MLflow's tqdm bars ("Downloading artifacts: 100%|...|") stay off the console: set in the driver before
#: Ray starts (console.quiet_console) and in every trial (a cluster node's process does not inherit it)
QUIET_MLFLOW = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
#: "1" while a sweep runs with --verbose (console.set_verbose); trial processes of a local Ray inherit it
VERBOSE_ENV = "FER_RAY_VERBOSE"


def quiet_trial_logs() -> None:
    """Keep a trial's chatter off the sweep's console: MLflow's progress bars always; unless --verbose,
    the INFO lines of MLflow ("Validating input example against model signature") and Ray's note on
    every per-epoch checkpoint."""
    for name, value in QUIET_MLFLOW.items():
        os.environ.setdefault(name, value)
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    if not is_verbose():
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def is_verbose() -> bool:
    """Whether the sweep runs with --verbose (VERBOSE_ENV)."""
    return os.environ.get(VERBOSE_ENV, "0") == "1"


#: data sections that describe one dataset only: logged on runs of that dataset alone
DATASET_SECTIONS = ("synthetic", "radiate")


def applicable_params(spec: SweepSpec) -> dict[str, Any]:
    """The run's params: the data, model, train and (validated) settings sections without what does not apply
    to this run (None values, empty sections, another dataset's section), flattened to dotted keys."""
    sections = spec.model_dump(mode="json", include={"data", "model", "train"})
    sections["settings"] = spec.experiment_settings().model_dump(mode="json")  # defaults included: they apply
    for name in DATASET_SECTIONS:
        if name != spec.data.dataset:
            sections["data"].pop(name, None)
    return flatten(_pruned(sections))


def _pruned(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` without None values and, recursively, without mappings left empty."""
    kept = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _pruned(value)
            if not value:
                continue
        elif value is None:
            continue
        kept[key] = value
    return kept


def trial_key(overrides: dict[str, Any]) -> str:
    """Stable id of a trial from the values that make it unique (its grid point / sampled values)."""
    canonical = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_name(values: dict[str, Any], spec: SweepSpec | None = None) -> str:
    """A trial's name, the same in MLflow, the live console and the end summary: ``key=value`` for
    each of its values (the key's last part; lists without blanks: ``head=[512,128]``), "trial" when
    it has none.

    Given the sweep's ``spec``: the keys that vary across the sweep come first (then those with a
    single value), sampled (Optuna) numbers have 4 significant digits, and an evaluation sweep's
    model is named for what it is (``train_seed=0``: the model of training seed 0; else
    ``model=<registered name/version, run id or file name>``) instead of its URI."""
    items = [(key, value, model_label(value, spec) if key == SOURCE_MODEL_KEY else None) for key, value in values.items()]
    if spec is not None:
        items.sort(key=lambda item: item[0] not in varying_keys(spec))  # stable: the sweep's own order within each
    sampled = set() if spec is None else set(values) - set(spec.search.grid)
    short = short_keys([key for key, _, label in items if label is None])
    parts = [label or f"{short[key]}={_value_text(value, key in sampled)}" for key, value, label in items]
    return ",".join(parts) or "trial"


#: last key parts that say nothing alone: named with their parent (``augment.enabled``)
_BARE_KEY_PARTS = frozenset({"enabled"})


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's name in a trial name: its last part, or as many of its last parts as it takes
    to tell it from the other keys (``split.seed`` and ``train.seed`` when both vary) or to say what a
    bare flag belongs to (``augment.enabled``)."""
    depth = {key: 2 if key.split(".")[-1] in _BARE_KEY_PARTS else 1 for key in keys}
    while True:
        names = {key: ".".join(key.split(".")[-depth[key] :]) for key in keys}
        uses = Counter(names.values())
        clashing = {key for key in keys if uses[names[key]] > 1 and depth[key] < key.count(".") + 1}
        if not clashing:
            return names
        for key in clashing:
            depth[key] += 1


def _value_text(value: Any, sampled: bool) -> str:
    """A value in a trial name: lists without spaces (``[512,128]``: a name holds no blank), sampled
    numbers to 4 significant digits."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(item, sampled) for item in value) + "]"
    if isinstance(value, float) and sampled:
        return f"{value:.4g}"
    return str(value)


#: the trial key of an evaluation sweep's model (one grid value per model it evaluates)
SOURCE_MODEL_KEY = "source.model"


def varying_keys(spec: SweepSpec) -> set[str]:
    """The trial keys whose value differs between the sweep's trials."""
    keys = {key for key, values in spec.search.grid.items() if len(values) > 1}
    if spec.search.optuna is not None:  # a choice of one value does not vary
        keys.update(key for key, space in spec.search.optuna.space.items() if space.choice is None or len(space.choice) > 1)
    elif not spec.evaluates_model and len(spec.search.seeds) > 1:
        keys.add("train.seed")
    return keys


def model_label(source: str, spec: SweepSpec | None) -> str:
    """``key=value`` naming the model an evaluation trial evaluates: ``train_seed=<seed>`` for a model
    the sweep's own training made (``source.model: train``: the sweep's models follow
    ``source.train_seeds``), ``model=<name/version>`` for a registered one, ``model=run <id>`` for a
    run's model, ``model=<file name>`` for a file."""
    models = spec.search.grid.get(SOURCE_MODEL_KEY, []) if spec is not None else []
    if spec is not None and spec.source.model == "train" and source in models:
        return f"train_seed={spec.source.train_seeds[models.index(source)]}"
    if source.startswith("models:/"):
        return f"model={source.removeprefix('models:/')}"
    if source.startswith("runs:/"):
        return f"model=run {source.split('/')[1][:8]}"
    return f"model={Path(source).name}"


class TuneMlflowReporter:
    """Reporter (fer_ray.experiments.base) that reports to Ray Tune and logs to one MLflow run."""

    def __init__(self, tracker: Tracker, run_id: str, work_dir: Path, image_size: int = 64, checkpoint_every: int = 1):
        self.tracker = tracker
        self.run_id = run_id
        self.work_dir = work_dir
        self.checkpoint_every = checkpoint_every
        #: the trained model's input side, for its MLflow Model signature
        self.image_size = image_size
        #: the latest per-epoch metrics; the trial's final Tune report repeats them (Optuna reads its
        #: metric, e.g. val_acc, from the last report)
        self.last_epoch_metrics: dict[str, float] = {}

    def epoch(self, metrics: dict[str, float], step: int, checkpoint: Path | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=step)
        self.last_epoch_metrics = {**metrics, "epoch": step}
        if checkpoint is None:
            tune.report(self.last_epoch_metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            _link_or_copy(checkpoint, Path(folder) / CHECKPOINT_FILE)
            tune.report(self.last_epoch_metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def figure(self, figure, name: str) -> None:
        self.tracker.log_figure(self.run_id, figure, name)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if folder == MODEL_DIR and path.name == WEIGHTS:  # the trained model: logged as an MLflow Model
            log_pyfunc(self.tracker, self.run_id, path, self.image_size)
            return
        self.tracker.log_artifact(self.run_id, path, folder)

    def tags(self, tags: dict[str, str]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def resume_checkpoint(self) -> Path | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            if not (Path(folder) / CHECKPOINT_FILE).is_file():
                return None
            target = self.work_dir / "resume" / CHECKPOINT_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / CHECKPOINT_FILE, target)
        return target


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where both lie on one filesystem (no second copy of a checkpoint on disk), else a copy."""
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def report_finished(metrics: dict[str, Any]) -> None:
    """The trial's last Tune report, with a checkpoint holding only FINISHED_FILE (the metrics as JSON)."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / FINISHED_FILE).write_text(json.dumps(metrics, default=str))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def drop_fit_checkpoint(result) -> None:
    """Delete the weights and optimizer state Tune kept for a trial that will not run again (``result``:
    a ray.tune.Result or a saved Tune Trial, of a trial the scheduler stopped early; a finished trial's checkpoint is already
    FINISHED_FILE alone). Storage may be local or remote: Tune's own filesystem handle deletes it."""
    checkpoint = result.checkpoint
    if checkpoint is None:
        return
    content = checkpoint.filesystem.get_file_info(f"{checkpoint.path}/{CHECKPOINT_FILE}")
    if content.type != pyarrow.fs.FileType.NotFound:
        checkpoint.filesystem.delete_dir(checkpoint.path)


def finished_before() -> dict[str, Any] | None:
    """The final report of this trial when Tune restored it from its FINISHED_FILE checkpoint, else None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        marker = Path(folder) / FINISHED_FILE
        return json.loads(marker.read_text()) if marker.is_file() else None


def fetch_model(tracker: Tracker, source: str, folder: Path) -> Path:
    """A local copy of the model file to evaluate: MLflow URIs (runs:/, models:/ from the sweep's own
    registry) are downloaded from the tracking server (so any node can fetch them); a plain path is
    used where it is. A downloaded MLflow Model folder yields the fer_ray model file inside it."""
    if source.startswith("models:/"):
        return download_registered(tracker, resolve_registered(tracker, source), folder)
    if not source.startswith("runs:/"):
        return Path(source)
    if source.endswith(f"/{MODEL_DIR}/{WEIGHTS}"):  # written before models were MLflow Models: take the folder
        source = source.removesuffix(f"/{WEIGHTS}")
    folder.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder), tracking_uri=tracker.uri)
    path = Path(local)
    return path if path.is_file() else weights_file(path)


def source_tags(tracker: Tracker, source: str) -> dict[str, str]:
    """Which model an evaluation run used (the training run id when it came from one; a registered
    version's name, version and training run)."""
    tags = {TAG_SOURCE_MODEL: source}
    if source.startswith("runs:/"):
        tags[TAG_SOURCE_RUN] = source.split("/")[1]
    if source.startswith("models:/"):
        tags.update(resolve_registered(tracker, source).tags())
    return tags


def gpu_ids() -> str:
    """The GPUs Ray gave this trial, as the node's ids joined by ',' ('' on CPU): a fractional trial
    shares its id with the other trials on that GPU."""
    return ",".join(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))


def finished_run(tracker: Tracker, parent_id: str, key: str) -> Run | None:
    """The FINISHED child run of trial ``key`` under ``parent_id``, or None. Tune saves its state at
    checkpoints and every ~10 s, so a driver killed just after a trial's end can leave that trial
    RUNNING in the saved state, and ``--resume`` starts it again."""
    runs = tracker.find_runs(f"{tag_filter(TAG_PARENT, parent_id)} and {tag_filter(TAG_TRIAL_KEY, key)} and attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def never_retried_on_bad_input(trainable):
    """``trainable`` that, on an InputError, ends its trial instead of raising: Tune retries a trial
    that raised (FailureConfig.max_failures, meant for lost workers and nodes), and bad input fails
    the same way every time. The trial's MLflow run is closed FAILED with the message as a tag, and
    its last Tune report carries TRIAL_INPUT_ERROR (the driver counts the trial as failed). Under
    Optuna the report gives the searched metric its worst value (-inf when maximising), so the
    searcher and ASHA rank the trial last and Tune's check that every report has the metric holds."""

    @functools.wraps(trainable)
    def stop_on_bad_input(config: dict[str, Any], *, spec: SweepSpec, tracker: Tracker, parent_id: str) -> None:
        try:
            return trainable(config, spec=spec, tracker=tracker, parent_id=parent_id)
        except InputError as error:
            message = " ".join(f"{type(error).__name__}: {error}".split())
        for run in tracker.find_runs(f"{tag_filter(TAG_PARENT, parent_id)} and {tag_filter(TAG_TRIAL_KEY, trial_key(dict(config)))}"):
            tracker.set_tags(run.info.run_id, {TAG_INPUT_ERROR: message})
            tracker.finish(run.info.run_id, "FAILED")
        optuna = spec.search.optuna
        worst = {optuna.metric: float("-inf") if optuna.mode == "max" else float("inf")} if optuna else {}
        tune.report({**worst, TRIAL_INPUT_ERROR: message})
        return None

    return stop_on_bad_input


@never_retried_on_bad_input
def run_trial(config: dict[str, Any], *, spec: SweepSpec, tracker: Tracker, parent_id: str) -> None:
    """The Tune trainable: config = this trial's values (flat dotted keys, grid and Optuna alike);
    the sweep's validated spec arrives via the object store."""
    quiet_trial_logs()
    finished = finished_before()
    if finished is not None:  # it ran to the end before: its MLflow run is FINISHED, its model logged
        tune.report(finished)
        return
    overrides = dict(config)
    sweep, spec = spec, trial_spec(spec, overrides)
    key = trial_key(overrides)
    finished = finished_run(tracker, parent_id, key)
    if finished is not None:  # ran to the end before the driver died: report it, never run it again
        tune.report({**finished.data.metrics, TRIAL_FINISHED: True, "mlflow_run_id": finished.info.run_id})
        return
    run_id = tracker.child_run(
        parent_id,
        key,
        run_name=run_name(overrides, sweep),
        params=applicable_params(spec),
        tags={
            "fer_ray.experiment": spec.experiment,
            "fer_ray.sweep": spec.name,
            "fer_ray.profile": spec.profile,
            "fer_ray.trial_id": tune.get_context().get_trial_id(),
            "fer_ray.node_id": ray.get_runtime_context().get_node_id(),
            "fer_ray.gpu_ids": gpu_ids(),
            TAG_RESOURCES: resources_tag(spec),
            TAG_TRIAL_VALUES: json.dumps(overrides, sort_keys=True, default=str),
        },
    )
    experiment = get_experiment(spec.experiment)
    # A run left open here (an exception, ASHA stopping the trial, a lost node) is closed by the driver
    # once Tune is done with the trial: it alone knows whether the trial failed or was stopped early.
    with tempfile.TemporaryDirectory(prefix="fer_ray_trial_") as folder:
        reporter = TuneMlflowReporter(tracker, run_id, Path(folder), spec.data.image_size, spec.failure.checkpoint_every)
        trial = trial_of(spec)
        if experiment.evaluates_model:
            trial = replace(trial, model_file=fetch_model(tracker, spec.source.model, Path(folder) / "source"))
            reporter.tags(source_tags(tracker, spec.source.model))
        else:
            reporter.tags({TAG_TRAIN_HASH: training_hash(spec)})
        final_metrics = experiment.run(trial, reporter)
    tracker.log_metrics(run_id, final_metrics)
    tracker.finish(run_id, "FINISHED")
    report_finished({**reporter.last_epoch_metrics, **final_metrics, TRIAL_FINISHED: True, "mlflow_run_id": run_id})
