"""The report of an Optuna search sweep (``search.optuna``): its trials differ in sampled
hyper-parameters, not in seeds, so they are ranked, never averaged.

Builds fer_ray.core.search's plain records from the sweep's TrialTable (every trial, the ones ASHA
stopped included) and hands back its Report: the best finished trial chosen on the (validation)
search metric with its test accuracy, every trial ranked with stopped ones marked, the search
history and metric-against-parameter figures, and the parent-run metrics ``best_<metric>``
(``best_val_acc`` for the usual val_acc) and ``best_trial_test_acc``.
"""

from __future__ import annotations

import pandas as pd

from fer_ray.core.search import (
    FAILED,
    FINISHED,
    STOPPED,
    SearchTrial,
    rank_trials,
    summarise_search,
)
from fer_ray.experiments.results import Report, TrialStatus, TrialTable
from fer_ray.orchestrate.spec import OptunaConfig

_STATUS = {TrialStatus.FINISHED: FINISHED, TrialStatus.STOPPED: STOPPED, TrialStatus.FAILED: FAILED}


def search_trials(table: TrialTable, optuna: OptunaConfig) -> list[SearchTrial]:
    """One SearchTrial per trial of the sweep, in start order: its sampled values (the keys of
    ``optuna.space``), its last reported search metric, its test accuracy (finished trials) and the
    epochs it reported (its history of the search metric when the experiment records one)."""
    trials = []
    for order, record in enumerate(table):
        history = record.history.get(optuna.metric, ())
        epochs = len(history) if history else (int(record.metrics["epochs_run"]) if "epochs_run" in record.metrics else None)
        trials.append(
            SearchTrial(
                name=record.run_name or record.run_id,
                order=order,
                status=_STATUS[record.status],
                values={key: record.values[key] for key in optuna.space if key in record.values},
                metric=record.metric(optuna.metric),
                test_acc=record.metric("test_acc") if record.status is TrialStatus.FINISHED else float("nan"),
                epochs=epochs,
            )
        )
    return trials


def search_report(table: TrialTable, optuna: OptunaConfig) -> tuple[Report, pd.DataFrame]:
    """The search's Report, and its summary.csv rows (one per trial, ranked)."""
    trials = search_trials(table, optuna)
    markdown, figures, metrics = summarise_search(trials, optuna.metric, optuna.mode, _validation_images(table, optuna.metric))
    metrics = {f"best_{optuna.metric}" if key == "best_val_acc" else key: value for key, value in metrics.items()}
    rows = [
        {"rank": rank, "trial": t.name, "status": t.status, optuna.metric: t.metric, "test_acc": t.test_acc, "epochs": t.epochs, **t.values}
        for rank, t in rank_trials(trials, optuna.mode)
    ]
    return Report(markdown, figures, metrics), pd.DataFrame(rows)


def _validation_images(table: TrialTable, metric: str) -> int | None:
    """How many validation images the search metric was measured on: the ``fer_ray.n_val`` tag the
    fine-tuning trials set (one split for every trial); None for another metric or without the tag."""
    counts = {record.tags.get("fer_ray.n_val") for record in table} - {None}
    return int(counts.pop()) if metric == "val_acc" and len(counts) == 1 else None
