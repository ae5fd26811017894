"""Sweep spec -> Ray Tune ``Tuner``: search space, resources, search algorithm, scheduler, failures,
storage. (The trial plan that ``--dry-run`` prints is in plan.py, which imports no Ray.)"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from fer_ray.orchestrate.console import SweepConsole, tune_reporter
from fer_ray.orchestrate.resources import AUTO
from fer_ray.orchestrate.spec import Distribution, SweepSpec
from fer_ray.orchestrate.tracking import Tracker
from fer_ray.orchestrate.trial import is_verbose, run_trial


def tune_search_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's config: flat dotted keys, for grid and Optuna alike (a trial's config IS its values).
    Grid: one grid_search per key (Tune takes their product), then ``train.seed`` over search.seeds
    for training sweeps (an evaluation sweep's models, one per training seed, are its
    ``source.model`` key). Optuna: one Tune domain per key, and the first seed."""
    if spec.search.optuna is None:
        space: dict[str, Any] = {key: tune.grid_search(values) for key, values in spec.search.grid.items()}
        if not spec.evaluates_model:
            space["train.seed"] = tune.grid_search(spec.search.seeds)
        return space
    space = {key: _domain(dist) for key, dist in spec.search.optuna.space.items()}
    space["train.seed"] = spec.search.seeds[0]
    return space


def _domain(dist: Distribution):
    if dist.loguniform is not None:
        return tune.loguniform(*dist.loguniform)
    if dist.uniform is not None:
        return tune.uniform(*dist.uniform)
    if dist.randint is not None:
        return tune.randint(*dist.randint)
    return tune.choice(dist.choice)


def build_tuner(spec: SweepSpec, tracker: Tracker, parent_id: str, storage_path: str, run_name: str) -> tune.Tuner:
    """The Tuner for a fresh sweep. Trials get spec/tracker/parent through the object store."""
    return tune.Tuner(
        trainable(spec, tracker, parent_id),
        param_space=tune_search_space(spec),
        tune_config=_tune_config(spec),
        run_config=run_config(spec, storage_path, run_name),
    )


def trainable(spec: SweepSpec, tracker: Tracker, parent_id: str):
    """run_trial with the sweep's shared inputs bound (tune.with_parameters) and resources attached."""
    if spec.resources.gpu == AUTO:
        raise ValueError("resources.gpu is 'auto': resolve it first (resources.resolve_resources / resolved_spec)")
    bound = tune.with_parameters(run_trial, spec=spec, tracker=tracker, parent_id=parent_id)
    return tune.with_resources(bound, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _tune_config(spec: SweepSpec) -> tune.TuneConfig:
    """Search algorithm and scheduler. reuse_actors: a trial process imports torch, MLflow and the
    experiment once and then runs trial after trial (seconds saved per trial; benchmarks/overhead.py)."""
    optuna = spec.search.optuna
    if optuna is None:
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.search.max_concurrent, reuse_actors=True)
    scheduler = None
    if optuna.asha is not None:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            # one report per epoch plus the trial's final (test) report: ASHA stops a trial once it
            # reaches max_t, so max_t must leave room for that last report
            max_t=spec.train.epochs + 1,
            grace_period=min(optuna.asha.grace_period, spec.train.epochs),
            reduction_factor=optuna.asha.reduction_factor,
        )
    _quiet_optuna()
    return tune.TuneConfig(
        metric=optuna.metric,
        mode=optuna.mode,
        search_alg=OptunaSearch(seed=optuna.seed),
        scheduler=scheduler,
        num_samples=optuna.num_samples,
        max_concurrent_trials=spec.search.max_concurrent,
        reuse_actors=True,
    )


def run_config(spec: SweepSpec, storage_path: str, run_name: str) -> tune.RunConfig:
    return tune.RunConfig(
        name=run_name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        # the sweep's console (console.SweepConsole); Tune's own table only with --verbose
        progress_reporter=tune_reporter(spec),
        callbacks=[*result_loggers(), SweepConsole(spec)],
        verbose=1,
    )


def result_loggers() -> list:
    """Tune's CSV and JSON result files (its ExperimentAnalysis reads them). The TensorBoard logger Tune
    would add is off (TUNE_ENVIRONMENT): MLflow is where results are viewed, and that logger imports
    torch into the driver (~2 s of every sweep's start-up) to write event files nobody reads."""
    return [CSVLoggerCallback(), JsonLoggerCallback()]


#: Tune settings read from the environment (a value the user exported wins).
TUNE_ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the legacy output engine honours progress_reporter (--verbose's table)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # only result_loggers(): no TensorBoard logger
    # per-epoch checkpoints of short trials trip Tune's "snapshotting too often" warning: noise here
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def set_tune_environment() -> None:
    """Apply TUNE_ENVIRONMENT; call before a Tuner is built or restored."""
    for name, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def _quiet_optuna() -> None:
    """Keep Optuna's chatter off the sweep's console: its warning that list-valued categorical choices
    (e.g. ``model.head: [[512], [512, 128]]``) cannot go to persistent storage (Tune's searcher keeps
    its study in memory, so they are fine), and, unless --verbose, its INFO line on creating the study."""
    import optuna

    warnings.filterwarnings("ignore", message="Choices for a categorical distribution should be", category=UserWarning)
    if not is_verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
