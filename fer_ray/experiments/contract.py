"""The contract between an experiment and the orchestrator: one typed :class:`Experiment` per kind.

An experiment module builds one ``EXPERIMENT = Experiment(...)`` and the registry
(fer_ray.experiments) names its module. The orchestrator reads nothing else from the module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from fer_ray.experiments.base import Reporter, Trial
from fer_ray.experiments.results import Report, TrialTable

#: ``run(trial, reporter) -> final metrics``: one trial, on any node (name -> float)
TrialFunction = Callable[[Trial, Reporter], "dict[str, float]"]
#: ``report(table) -> Report``: the experiment's section of the sweep report, on the driver
ReportFunction = Callable[[TrialTable], Report]


@dataclass(frozen=True)
class Experiment:
    """One ``experiment:`` kind of a sweep file.

    name: the kind (``noise``). settings: the pydantic model of its settings section.
    evaluates_model: True when it evaluates a trained model: the orchestrator then resolves (or
    trains) the model first and hands the trial its file as ``trial.model_file``. run: the trial
    function. report: the report function (None: the generic table of test metrics per grid point).
    report_artifacts: the artifact paths (``folder/file``) the report fetches from trials' runs;
    fetching any other path is an error. history_metrics: metrics whose per-epoch history the
    report receives (``TrialRecord.history``).
    """

    name: str
    settings: type[BaseModel]
    evaluates_model: bool
    run: TrialFunction
    report: ReportFunction | None = None
    report_artifacts: tuple[str, ...] = ()
    history_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.report is None and self.report_artifacts:
            raise ValueError(f"experiment {self.name}: report_artifacts without a report function")
