"""End to end: run one shipped sweep file, made tiny, through the CLI (real local Ray, real MLflow on
sqlite in the test's folder) and read back what it left: the parent and child runs, their artifacts
and the report. Shared by the experiments' end-to-end tests (tests/test_exp_*.py)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import mlflow
import pandas as pd

from conftest import TINY

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


@dataclass
class SweepResult:
    """What one sweep left in ``folder``: the MLflow store at ``uri`` and reports/<sweep>/."""

    sweep: str
    folder: Path
    uri: str

    @cached_property
    def runs(self) -> pd.DataFrame:
        """Every run of the store (mlflow.search_runs over all experiments)."""
        return mlflow.search_runs(search_all_experiments=True)

    @property
    def parent(self) -> pd.Series:
        """The sweep's one parent run (asserts there is exactly one)."""
        parents = self.runs[self.runs["tags.fer_ray.role"] == "parent"]
        assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
        return parents.iloc[0]

    @property
    def children(self) -> pd.DataFrame:
        """The trials' child runs."""
        return self.runs[self.runs["tags.fer_ray.role"] == "child"]

    @cached_property
    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.uri)

    def parent_metrics(self) -> dict[str, float]:
        """The parent run's metrics as the MLflow client reads them back."""
        return dict(self.client.get_run(self.parent["run_id"]).data.metrics)

    def artifacts(self, run_id: str, *folders: str) -> set[str]:
        """Artifact paths of a run at its root and in each of ``folders``."""
        return {a.path for folder in (None, *folders) for a in self.client.list_artifacts(run_id, folder)}

    @property
    def report_folder(self) -> Path:
        return self.folder / "reports" / self.sweep

    def report(self) -> str:
        return (self.report_folder / "report.md").read_text()


def run_sweep(sweep: str, folder: Path, monkeypatch, *overrides: str, expect_code: int = 0) -> SweepResult:
    """Run sweeps/<sweep>.yaml with ``--set TINY + overrides`` on 2 CPUs from ``folder`` (the test's
    tmp_path: reports/ and ray_results/ land there) and return what it left; asserts the exit code."""
    import ray

    from fer_ray.sweep import main

    monkeypatch.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        code = main([str(SWEEPS / f"{sweep}.yaml"), "--num-cpus", "2", "--tracking-uri", uri, "--set", *TINY, *overrides])
    finally:
        ray.shutdown()
    assert code == expect_code, f"sweep {sweep} exited {code}, expected {expect_code}"
    mlflow.set_tracking_uri(uri)
    return SweepResult(sweep=sweep, folder=folder, uri=uri)
