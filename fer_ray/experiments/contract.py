"""The contract between an experiment and the orchestrator: one typed :class:`Experiment` per kind.

An experiment module builds one ``EXPERIMENT = Experiment(...)`` and the registry
(fer_ray.experiments) names its module. The orchestrator reads nothing else from the module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel

from fer_ray.experiments.base import Reporter, Trial
from fer_ray.experiments.results import Report, TrialTable

#: ``run(trial, reporter) -> final metrics``: one trial, on any node (name -> float)
TrialFunction = Callable[[Trial, Reporter], "dict[str, float]"]
#: ``report(table) -> Report``: the experiment's section of the sweep report, on the driver
ReportFunction = Callable[[TrialTable], Report]
#: ``epochs(trial) -> N``: how many per-epoch reports a trial of this experiment makes at most
EpochCount = Callable[[Trial], int]

#: what a fine-tuning trial answers; the default summary of an experiment
FINETUNE_SUMMARY = ("val_acc", "test_acc", "test_macro_f1")


@dataclass(frozen=True)
class Experiment:
    """One ``experiment:`` kind of a sweep file.

    name: the kind (``noise``). settings: the pydantic model of its settings section.
    evaluates_model: True when it evaluates a trained model: the orchestrator then resolves (or
    trains) the model first and hands the trial its file as ``trial.model_file``. run: the trial
    function. report: the report function (None: the generic table of test metrics per grid point).
    report_artifacts: the artifact paths (``folder/file``) the report fetches from trials' runs;
    fetching any other path is an error. history_metrics: metrics whose per-epoch history the
    report receives (``TrialRecord.history``). summary_metrics: the numbers that answer the
    experiment's question, as metric names or patterns (``*`` stands for any characters but ``/``:
    ``acc_var_*``); the console shows them per trial while the sweep runs and in its end summary.
    epochs: how many per-epoch reports a trial makes (the console's ``epoch n/N``); None when its
    trials report once, at the end.
    """

    name: str
    settings: type[BaseModel]
    evaluates_model: bool
    run: TrialFunction
    report: ReportFunction | None = None
    report_artifacts: tuple[str, ...] = ()
    history_metrics: tuple[str, ...] = ()
    summary_metrics: tuple[str, ...] = FINETUNE_SUMMARY
    epochs: EpochCount | None = None

    def __post_init__(self) -> None:
        if self.report is None and self.report_artifacts:
            raise ValueError(f"experiment {self.name}: report_artifacts without a report function")

    def summary_columns(self, metric_names: Iterable[str]) -> list[str]:
        """The names among ``metric_names`` that summary_metrics selects, in the order of its patterns
        (see summary_groups)."""
        return [name for _, names in self.summary_groups(metric_names) for name in names]

    def summary_groups(self, metric_names: Iterable[str]) -> list[tuple[str, list[str]]]:
        """(pattern, the names among ``metric_names`` it selects) for each summary_metrics pattern that
        selects any; a pattern's names in the order of their numbers (``acc_eps_0.005`` before
        ``acc_eps_0.01``), then alphabetically. A name belongs to the first pattern that selects it."""
        names, taken = set(metric_names), set()
        groups = []
        for pattern in self.summary_metrics:
            matcher = metric_pattern(pattern)
            matched = [name for name in names - taken if matcher.fullmatch(name)]
            if matched:
                groups.append((pattern, sorted(matched, key=lambda name: _number_order(matcher.fullmatch(name).groups()))))
                taken.update(matched)
        return groups


def metric_pattern(pattern: str) -> re.Pattern:
    """A summary_metrics entry as a regular expression: ``*`` is any run of characters but ``/``, each
    a group (so ``acc_eps_*`` selects ``acc_eps_0.01`` but not ``acc_eps_0.01/subject_ci_low``)."""
    return re.compile("([^/]*)".join(re.escape(part) for part in pattern.split("*")))


def _number_order(parts: tuple[str, ...]) -> tuple:
    """Sort key of the parts a pattern's ``*`` matched: numbers by value, before words."""
    key = []
    for part in parts:
        try:
            key.append((float(part), part))
        except ValueError:
            key.append((math.inf, part))
    return tuple(key)
