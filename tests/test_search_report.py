"""The Optuna sweep's report (orchestrate.search_report) on an in-memory TrialTable: ranked trials,
ASHA-stopped ones marked, the best finished trial chosen on validation only."""

from __future__ import annotations

from pathlib import Path

import pytest

import trial_tables
from fer_ray.experiments.results import TrialStatus
from fer_ray.orchestrate.search_report import search_report
from fer_ray.orchestrate.spec import load_spec

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def test_search_report_ranks_every_trial_and_chooses_on_validation():
    spec = load_spec(SWEEPS / "hpo.yaml")
    rows = [  # (lr, status, val_acc, test_acc)
        (1e-3, TrialStatus.FINISHED, 0.70, 0.50),
        (3e-3, TrialStatus.STOPPED, 0.90, None),  # highest val_acc, but stopped by ASHA: not a candidate
        (5e-4, TrialStatus.FINISHED, 0.80, 0.60),
        (2e-3, TrialStatus.FINISHED, 0.75, 0.95),  # best test accuracy: must not decide anything
    ]
    records = []
    for index, (lr, status, val_acc, test_acc) in enumerate(rows):
        metrics = {"val_acc": val_acc} | ({"test_acc": test_acc, "epochs_run": 4.0} if test_acc is not None else {})
        tags = {"fer_ray.n_val": "40"}  # what every fine-tuning trial tags
        records.append(trial_tables.record(spec, {"train.lr": lr}, metrics, tags=tags, status=status, run_id=f"trial{index}"))
    report, summary = search_report(trial_tables.table(spec, records), spec.search.optuna)

    assert report.metrics == {"best_val_acc": 0.80, "best_trial_test_acc": 0.60}
    assert "Best finished trial: **trial2** — val_acc 0.8000, test accuracy 0.6000" in report.markdown
    assert "| 1 | trial1 | stopped early | 0.9000 | - |" in report.markdown
    # 0.80 vs the first trial's 0.70 on 40 validation images: inside its interval, so no claim
    assert "the best is +0.1000, +4 of 40 validation images" in report.markdown
    assert "inside it: not evidence that the search improved on its first draw" in report.markdown
    assert list(summary["trial"]) == ["trial1", "trial2", "trial3", "trial0"]
    assert list(summary["status"]) == ["stopped", "finished", "finished", "finished"]
    assert summary["train.lr"].tolist() == pytest.approx([3e-3, 5e-4, 2e-3, 1e-3])
    assert set(report.figures) == {"search_history.png", "search_parameters.png"}
