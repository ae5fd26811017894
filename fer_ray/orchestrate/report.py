"""After a sweep: gather its child runs from MLflow into a typed table, let the experiment report.

The report is built from MLflow alone, so it holds exactly the numbers the MLflow UI shows.
:func:`trial_table` turns the sweep's child runs into a ``TrialTable`` (fer_ray.experiments.results):
per trial its typed settings (re-validated from the values the trial logged), metrics, status,
source model, training seed, metric histories and a fetcher for its artifacts. An experiment with a
report function gets that table; otherwise the generic table applies: per grid point, mean and 95 %
CI over seeds (Student t), the study's figures and the best point's metrics on the parent run (all
from fer_ray.experiments.finetune_report, whose report is fine-tuning's own). Outputs go to ``reports/<sweep>/`` (report.md, summary.csv, PNGs) and to
the parent run's artifacts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fer_ray.core.formatting import epochs_text
from fer_ray.experiments import get_experiment
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.finetune_report import (
    aggregate,
    best_metrics,
    chance_accuracy,
    configuration_grid,
    study_figures,
    table_markdown,
)
from fer_ray.experiments.results import Report, TrialRecord, TrialStatus, TrialTable
from fer_ray.orchestrate.console import report_answer
from fer_ray.orchestrate.search_report import search_report
from fer_ray.orchestrate.spec import SETTINGS_SECTION, SweepSpec, trial_of, trial_spec
from fer_ray.orchestrate.tracking import (
    TAG_SOURCE_MODEL,
    TAG_SOURCE_RUN,
    TAG_STOPPED_EARLY,
    TAG_TRIAL_VALUES,
    Tracker,
)
from fer_ray.orchestrate.trial import varying_keys

#: where downloaded artifacts stay while the report is written (inside its folder)
FETCHED = ".artifacts"


def write_report(spec: SweepSpec, tracker: Tracker, parent_id: str, out_dir: Path) -> Path | None:
    """Aggregate the parent's finished child runs; write and log the report. None if no run finished."""
    experiment = get_experiment(spec.experiment)
    table = trial_table(spec, tracker, tracker.child_runs(parent_id), out_dir / FETCHED, experiment)
    finished = table.finished()
    if not len(finished):
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    # seeds (and, for evaluation sweeps, the models trained with different seeds) are what the
    # mean and CI run over; every other grid key is a row of the table
    grid = configuration_grid(spec.search.grid)
    summary = aggregate(finished, grid)
    if spec.search.optuna is not None:  # trials differ in sampled hyper-parameters, not seeds: ranked, not averaged
        report, summary = search_report(table, spec.search.optuna)
    elif experiment.report is not None:  # the experiment's own tables, statistics and figures replace the generic table
        report = experiment.report(table)
    else:
        report = Report(
            table_markdown(summary, list(grid)) + "\n", study_figures(summary, list(grid), chance_accuracy(finished)), best_metrics(summary)
        )
    summary.to_csv(out_dir / "summary.csv", index=False)
    if report.metrics:  # sweep-level numbers (best configuration, the SVM's refit test accuracy) on the parent run
        tracker.log_metrics(parent_id, dict(report.metrics))
    markdown = _header(spec, len(finished)) + "\n" + report.markdown + "\n" + "".join(f"![{name}]({name})\n" for name in report.figures)
    shutil.rmtree(out_dir / FETCHED, ignore_errors=True)
    for name, figure in report.figures.items():
        figure.savefig(out_dir / name, dpi=120, bbox_inches="tight")
    (out_dir / "report.md").write_text(markdown)
    answer = report_answer(markdown)  # the whole report with --verbose
    if answer:
        print(answer)
    for path in sorted(out_dir.iterdir()):
        tracker.log_artifact(parent_id, path, "report")
    return out_dir


# ------------------------------------------------------------------------------------ the table


def trial_table(spec: SweepSpec, tracker: Tracker, runs: list[Run], fetch_dir: Path, experiment: Experiment | None = None) -> TrialTable:
    """The sweep's child runs as a TrialTable (see the module docstring). ``fetch_dir``: where
    fetched artifacts are downloaded (one folder per run)."""
    experiment = experiment or get_experiment(spec.experiment)
    seeds: dict[str, int | None] = {}  # source training run id -> its train.seed
    records = []
    for run in runs:
        values = trial_values(run, spec)
        trial = trial_of(trial_spec(spec, values))
        tags = dict(run.data.tags)
        source = trial.model_source or tags.get(TAG_SOURCE_MODEL)
        records.append(
            TrialRecord(
                run_id=run.info.run_id,
                run_name=run.info.run_name or "",
                status=_status(run),
                trial=trial,
                values=values,
                metrics={key: float(value) for key, value in run.data.metrics.items()},
                tags={key: value for key, value in tags.items() if not key.startswith("mlflow.")},
                source_model=source,
                train_seed=_train_seed(tracker, tags.get(TAG_SOURCE_RUN), seeds) if experiment.evaluates_model else trial.train.seed,
                history={name: tracker.metric_history(run.info.run_id, name) for name in experiment.history_metrics},
                fetch=_fetcher(tracker, run.info.run_id, fetch_dir, experiment),
            )
        )
    return table_of(spec, records)


def table_of(spec: SweepSpec, records: list[TrialRecord]) -> TrialTable:
    """The TrialTable of ``spec`` holding ``records`` (its grid, and the grid's settings keys without their section)."""
    prefix = f"{SETTINGS_SECTION}."
    return TrialTable(
        sweep=spec.name,
        experiment=spec.experiment,
        settings=spec.experiment_settings(),
        data=spec.data,
        records=tuple(records),
        grid=dict(spec.search.grid),
        settings_grid={k[len(prefix) :]: v for k, v in spec.search.grid.items() if k.startswith(prefix)},
    )


def trial_values(run: Run, spec: SweepSpec) -> dict[str, Any]:
    """The values a trial varied, as the trial logged them (JSON, typed). A run from before that tag
    existed: its grid keys' param text read as YAML (numbers, lists, words)."""
    logged = run.data.tags.get(TAG_TRIAL_VALUES)
    if logged is not None:
        return json.loads(logged)
    import yaml

    params = run.data.params
    return {key: yaml.safe_load(params[key]) for key in [*spec.search.grid, "train.seed"] if key in params}


def _status(run: Run) -> TrialStatus:
    if run.info.status == "FINISHED":
        return TrialStatus.FINISHED
    if run.data.tags.get(TAG_STOPPED_EARLY) == "true":
        return TrialStatus.STOPPED
    return TrialStatus.FAILED


def _train_seed(tracker: Tracker, source_run: str | None, known: dict[str, int | None]) -> int | None:
    """The train.seed of the training run an evaluation trial's model came from (None: not a run)."""
    if source_run is None:
        return None
    if source_run not in known:
        try:
            seed = tracker.get_run(source_run).data.params.get("train.seed")
        except MlflowException:
            seed = None
        known[source_run] = None if seed is None else int(seed)
    return known[source_run]


def _fetcher(tracker: Tracker, run_id: str, fetch_dir: Path, experiment: Experiment):
    """fetch(artifact_path) for one run: downloads through the tracking server into
    ``fetch_dir/<run id>/``; only the paths the experiment declares in report_artifacts."""

    def fetch(artifact_path: str) -> Path | None:
        if artifact_path not in experiment.report_artifacts:
            raise ValueError(
                f"experiment {experiment.name}: artifact {artifact_path!r} is not declared in its report_artifacts "
                f"{list(experiment.report_artifacts)}"
            )
        try:
            return tracker.download_artifact(run_id, artifact_path, fetch_dir / run_id)
        except (MlflowException, OSError):  # no such artifact (each store says so its own way)
            return None

    return fetch


# ------------------------------------------------------------------------- the generic report


def _header(spec: SweepSpec, n_finished: int) -> str:
    """What was run, on what, split how: the first lines of every sweep report."""
    lines = [
        f"# {spec.name}",
        "",
        spec.description.strip(),
        "",
        f"- experiment: {spec.experiment}; profile: {spec.profile}; finished trials: {n_finished}",
        f"- data: {spec.data.dataset} at {spec.data.image_size} px; split: {spec.data.split.protocol}",
        f"- model: {spec.model.arch} (weights {spec.model.weights}); {epochs_text(spec.train.epochs, spec.train.images_per_epoch)}",
    ]
    varied = sorted(varying_keys(spec) - {"source.model"})
    if varied:  # the lines above give the sweep's base values: say which of them the trials change
        lines.append(f"- varied per trial (the values above are the base each trial changes): {', '.join(varied)}")
    lines.append("")  # what each table's intervals cover is said by the table itself (generic, search or the experiment's)
    return "\n".join(lines) + "\n"
