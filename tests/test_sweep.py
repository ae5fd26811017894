"""The sweep engine end to end: real Ray (local), real MLflow (sqlite in a temp dir), real torch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import TINY
from fer_ray.orchestrate.driver import saved_trials
from fer_ray.orchestrate.spec import load_spec
from fer_ray.sweep import main

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"

pytestmark = pytest.mark.slow


def _runs(tracking_uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(search_all_experiments=True)


def _children(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["tags.fer_ray.role"] != "parent"]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """Each test runs in its own folder: reports/, mlflow.db and ray_results/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def local_ray():
    import ray

    yield
    ray.shutdown()


def test_quickstart_end_to_end(workdir, local_ray, capsys):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    stale = workdir / "reports" / "quickstart" / "old_figures"
    stale.mkdir(parents=True)
    (stale / "stale.png").write_bytes(b"from an earlier run")
    (stale.parent / "stale.csv").write_text("from an earlier run\n")
    code = main([str(SWEEPS / "quickstart.yaml"), "--set", *TINY, "search.seeds=[0]", "--tracking-uri", uri, "--num-cpus", "2"])
    out = capsys.readouterr().out
    assert code == 0, out

    runs = _runs(uri)
    parents = runs[runs["tags.fer_ray.role"] == "parent"]
    children = _children(runs)
    assert len(parents) == 1
    assert len(children) == 2, "two learning rates x one seed"
    assert set(children["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    assert set(children["status"]) == {"FINISHED"}
    assert children["metrics.test_acc"].between(0, 1).all()
    assert children["tags.fer_ray.protocol"].eq("subject-disjoint").all()
    people = children["metrics.n_train_people"]  # of the 12 generated (6 per gender); val and test hold the rest
    assert people.between(1, 11).all() and (people == people.round()).all(), people
    client = mlflow.MlflowClient(uri)
    for run_id in children["run_id"]:
        assert len(client.get_metric_history(run_id, "val_acc")) == 2, "one val_acc per epoch"
        artifacts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "model")}
        assert "model/MLmodel" in artifacts and "confusion_matrix.png" in artifacts, "the model is an MLflow Model"
        confusion = {a.path for a in client.list_artifacts(run_id, "test_confusion")}
        assert confusion == {"test_confusion/counts.json"}, "the counts the report sums over the best configuration's seeds"

    # the report holds the numbers that are in MLflow
    summary = pd.read_csv(workdir / "reports" / "quickstart" / "summary.csv")
    by_lr = children.groupby(children["params.train.lr"].astype(float))["metrics.test_acc"].mean()
    assert len(summary) == 2
    for _, row in summary.iterrows():
        assert row["test_acc"] == pytest.approx(by_lr[float(row["train.lr"])])
    report = (workdir / "reports" / "quickstart" / "report.md").read_text()
    assert f"{summary['test_acc'].iloc[0]:.3f}" in report
    assert "- varied per trial (the values above are the base each trial changes): train.lr\n" in report
    parent_artifacts = {a.path for a in client.list_artifacts(parents["run_id"].iloc[0], "report")}
    assert "report/report.md" in parent_artifacts
    # the report folder started empty: what an earlier run left there is gone, not on this parent run
    assert not (workdir / "reports" / "quickstart" / "stale.csv").exists() and not stale.exists()
    assert not {"report/stale.csv", "report/old_figures"} & parent_artifacts, parent_artifacts
    assert "Report:" in out and "quickstart" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("lr=")]
    assert listed[-2:] == ["lr=0.001,seed=0", "lr=0.0003,seed=0"], "the end summary lists the trials in grid order"

    # the parent run, where the MLflow UI opens: note, what varied, the report's numbers and figures
    parent = client.get_run(parents["run_id"].iloc[0])
    spec = load_spec(SWEEPS / "quickstart.yaml")
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["mlflow.note.content"] == spec.description.strip()
    assert json.loads(parent.data.params["train.lr"]) == [0.001, 0.0003] and json.loads(parent.data.params["train.seed"]) == [0]
    # the best is chosen on validation, not on test (ties: any of the tied runs)
    chosen = children[children["metrics.best_val_acc"] == children["metrics.best_val_acc"].max()]
    assert parent.data.metrics["best_val_acc"] == pytest.approx(chosen["metrics.best_val_acc"].iloc[0])
    assert parent.data.metrics["best_test_acc"] in set(chosen["metrics.test_acc"])
    assert parent.data.metrics["best_n_seeds"] == 1
    named = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert {"learning_curves.png", "best_confusion_matrix.png"} <= set(named)
    assert {f"report/{name}" for name in named} <= parent_artifacts, "every figure the report names is on the parent run"
    best_line = next(line for line in report.splitlines() if line.startswith("**best: "))
    assert f"test_acc {parent.data.metrics['best_test_acc']:.3f} from one seed (no interval)" in best_line
    # children: only the params that apply, no metric named like a param, the profile tag
    params = children.filter(like="params.").dropna(axis=1, how="all")
    assert not [c for c in params if c.startswith("params.data.radiate")] and "params.data.root" not in params
    assert not (params == "None").any().any() and not (params == "{}").any().any()
    assert "metrics.sched_lr" in children and "metrics.lr" not in children
    assert set(children["tags.fer_ray.profile"]) == {spec.profile}

    # Tune keeps the CSV/JSON results its ExperimentAnalysis reads, and writes no TensorBoard files
    tune_files = [path.name for path in (workdir / "ray_results").rglob("*") if path.is_file()]
    assert tune_files.count("result.json") == 2 and tune_files.count("progress.csv") == 2
    assert not [name for name in tune_files if name.startswith("events.out.tfevents")]


def test_dry_run_prints_the_plan_and_runs_nothing(workdir, capsys):
    code = main([str(SWEEPS / "dataset_fraction.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "15 trials" in out, out  # 5 fractions x 3 seeds in the embedded profile
    assert "data.train_fraction: [0.8, 0.7, 0.5, 0.2, 0.1]" in out
    assert "1 CPU" in out and "pre-flight" in out and "time: " in out and "PFLOP" not in out
    assert not (workdir / "mlflow.db").exists() and not (workdir / "ray_results").exists()


def test_dry_run_of_a_sweep_that_trains_nothing(workdir, capsys):
    assert main([str(SWEEPS / "probe.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 trials" in out and "training stage" not in out and "source.model" not in out


def test_bad_spec_fails_with_key_path_and_exit_code_2(workdir, capsys):
    code = main([str(SWEEPS / "quickstart.yaml"), "--set", "train.lrr=0.1", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.lrr" in err and "did you mean 'lr'" in err


def _running_mid_trial(uri: str, epochs: int, after_one_finished: bool = True) -> str | None:
    """The run id of a RUNNING trial with some but not all of its epochs logged (once another trial has
    FINISHED, unless not ``after_one_finished``); else None."""
    runs = _runs(uri)
    if runs.empty or "tags.fer_ray.role" not in runs:
        return None
    children = _children(runs)
    if after_one_finished and not (children["status"] == "FINISHED").any():
        return None
    client = mlflow.MlflowClient(uri)
    for run_id in children.loc[children["status"] == "RUNNING", "run_id"]:
        if 1 <= len(client.get_metric_history(run_id, "val_acc")) < epochs:
            return run_id
    return None


def _interrupt_mid_trial(args: list[str], workdir: Path, uri: str, epochs: int, after_one_finished: bool) -> tuple[int, str, str]:
    """Run the sweep command ``args`` in a subprocess and SIGINT it once _running_mid_trial() finds a
    trial mid-run; (exit status, its output, that trial's run id)."""
    _runs(uri)  # create the MLflow tables now: two processes migrating one new sqlite file collide
    with open(workdir / "driver.log", "w") as log:
        driver = subprocess.Popen(args, cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 480
        while time.time() < deadline and not (running := _running_mid_trial(uri, epochs, after_one_finished)):
            assert driver.poll() is None, (workdir / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        assert running, "no trial was mid-run within 480 s"
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    return driver.returncode, (workdir / "driver.log").read_text(), running


def test_interrupted_sweep_closes_every_run_and_resumes_without_rerunning(workdir):
    """SIGINT the driver while a trial runs, after another has finished: every run is closed (parent
    and the running trial KILLED), the summary names all four trials, exit 130; --resume completes the
    rest without running the finished trial again."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    epochs = 3
    args = [
        sys.executable,
        "-m",
        "fer_ray.sweep",
        str(SWEEPS / "quickstart.yaml"),
        "--num-cpus",
        "1",
        "--tracking-uri",
        uri,
        "--set",
        *TINY,
        f"train.epochs={epochs}",
        "search.seeds=[0,1]",
        "search.max_concurrent=1",
    ]  # Tune creates a trial only when one may start: the summary must name the rest
    code, out, running = _interrupt_mid_trial(args, workdir, uri, epochs, after_one_finished=True)
    assert code == 130, "an interrupted sweep exits 130 (128 + SIGINT)\n" + out[-3000:]

    # read back through MLflow: nothing is left RUNNING
    runs = _runs(uri)
    (parent_status,) = runs.loc[runs["tags.fer_ray.role"] == "parent", "status"]
    before = _children(runs).set_index("run_id")
    assert parent_status == "KILLED"
    assert before.loc[running, "status"] == "KILLED", "the trial running at the interrupt"
    assert set(before["status"]) <= {"FINISHED", "KILLED"}, before["status"]
    finished = list(before.index[before["status"] == "FINISHED"])
    assert 1 <= len(finished) < 4

    # the summary names every trial, those that never started too
    names = {f"lr={lr},seed={seed}" for lr in ("0.001", "0.0003") for seed in (0, 1)}
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in names]
    summary = {fields[0]: "not run" if fields[1:3] == ["not", "run"] else fields[1] for fields in rows}
    assert set(summary) == names, out[-3000:]
    by_name = before.set_index("tags.mlflow.runName")["status"]
    expected = {name: {"FINISHED": "done", "KILLED": "killed"}.get(by_name.get(name), "not run") for name in names}
    assert summary == expected
    (tune_path,) = (workdir / "ray_results").iterdir()
    assert len(saved_trials(str(tune_path))) < 4, "some trials were never created: their names come from the grid"

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    resumed = subprocess.run(args + ["--resume"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = _runs(uri)
    children = _children(runs).set_index("run_id")
    assert list(runs.loc[runs["tags.fer_ray.role"] == "parent", "status"]) == ["FINISHED"]
    assert len(children) == 4, "2 learning rates x 2 seeds, each recorded once"
    assert children["tags.fer_ray.trial_key"].nunique() == 4
    assert set(children["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient(uri)
    for run_id in finished:  # not run again: one attempt, each epoch logged once
        assert children.loc[run_id, "tags.fer_ray.attempts"] == "1"
        assert sorted(m.step for m in client.get_metric_history(run_id, "val_acc")) == list(range(1, epochs + 1))
    assert children.loc[running, "tags.fer_ray.attempts"] == "2", "the interrupted trial ran again, in its own run"


def test_interrupt_during_an_evaluation_sweeps_training_stage_exits_130(workdir):
    """Ctrl-C while the training stage of an evaluation sweep runs: the stage's runs are closed, the
    summary names its trials, exit 130 (not 1 'training stage did not finish'), no evaluation starts."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    epochs = 3
    args = [sys.executable, "-m", "fer_ray.sweep", str(SWEEPS / "evaluate.yaml"), "--num-cpus", "1", "--tracking-uri", uri,
            "--set", *TINY, f"train.epochs={epochs}", "source.train_seeds=[0,1]"]  # fmt: skip
    code, out, running = _interrupt_mid_trial(args, workdir, uri, epochs, after_one_finished=False)
    assert code == 130, out[-3000:]
    assert "did not finish" not in out
    assert "run the same command again (without --resume)" in out and "--resume\n" not in out, out[-3000:]
    runs = _runs(uri)
    parents = runs[runs["tags.fer_ray.role"] == "parent"]
    assert list(parents["tags.fer_ray.sweep"]) == ["evaluate-train"], "no evaluation stage started"
    assert list(parents["status"]) == ["KILLED"]
    children = _children(runs).set_index("run_id")
    assert children.loc[running, "status"] == "KILLED"
    assert "RUNNING" not in set(children["status"])
    seeds = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith(("seed=0 ", "seed=1 "))}
    assert set(seeds) == {"seed=0", "seed=1"}, out[-3000:]
    assert seeds[children.loc[running, "tags.mlflow.runName"]] == "killed"


def test_interrupt_while_the_report_is_written_leaves_the_parent_killed_and_resume_writes_it(workdir, local_ray, monkeypatch):
    """Ctrl-C after every trial finished, inside the report (here: write_report raises it once): the
    parent run is KILLED, not left RUNNING, and --resume writes the report without rerunning a trial."""
    import fer_ray.orchestrate.report as report_module

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    args = [str(SWEEPS / "probe.yaml"), "--num-cpus", "2", "--tracking-uri", uri, "--set", "settings.steps=1"]
    write_report = report_module.write_report

    def interrupted(*args, **kwargs):
        monkeypatch.setattr(report_module, "write_report", write_report)
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    runs = _runs(uri)
    assert list(runs.loc[runs["tags.fer_ray.role"] == "parent", "status"]) == ["KILLED"]
    children = _children(runs)
    assert len(children) >= 1 and set(children["status"]) == {"FINISHED"}
    assert not (workdir / "reports" / "probe" / "report.md").exists()

    assert main(args + ["--resume"]) == 0
    runs = _runs(uri)
    assert list(runs.loc[runs["tags.fer_ray.role"] == "parent", "status"]) == ["FINISHED"]
    assert sorted(_children(runs)["run_id"]) == sorted(children["run_id"]), "no trial ran again"
    assert (workdir / "reports" / "probe" / "report.md").exists()


def test_optuna_sweep_with_asha_early_stopping(workdir, local_ray, capsys):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    code = main(
        [
            str(SWEEPS / "hpo.yaml"),
            "--num-cpus",
            "2",
            "--tracking-uri",
            uri,
            # enough people that learning rates separate on val_acc (at chance every trial ties and
            # ASHA, which stops only trials strictly below its cut-off, stops none)
            "--set",
            *TINY,
            "data.synthetic.identities=24",
            "train.epochs=3",
            "search.optuna.num_samples=5",
            "search.optuna.space.train.lr={loguniform: [0.00001, 0.003]}",
            "search.optuna.asha={grace_period: 1, reduction_factor: 2}",
            "search.max_concurrent=1",  # sequential: ASHA's decisions (and so this test) are deterministic
        ]
    )
    assert code == 0
    children = _children(_runs(uri))
    assert len(children) == 5
    assert children["params.train.lr"].nunique() == 5, "Optuna proposed distinct learning rates"
    epochs_run = [len(mlflow.MlflowClient(uri).get_metric_history(r, "val_acc")) for r in children["run_id"]]
    assert max(epochs_run) == 3
    assert min(epochs_run) < 3, f"ASHA stopped no trial early: {epochs_run}"
    stopped = children[children["status"] != "FINISHED"]
    assert (stopped["tags.fer_ray.stopped_early"] == "true").all()
    # no trial, finished or stopped, leaves weights or optimizer state in Tune's folder
    assert not list((workdir / "ray_results").rglob("checkpoint.pt"))
    # the end-of-sweep summary says which trials ASHA stopped (Tune's own "done" is set on them too)
    summary = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("lr=")]
    statuses = sorted(fields[1] for fields in summary)
    assert statuses == sorted(["stopped"] * len(stopped) + ["done"] * (5 - len(stopped))), summary
    # and the report's trial table marks them stopped, with their typed values and val_acc history
    from fer_ray.experiments.results import TrialStatus
    from fer_ray.orchestrate.report import trial_table
    from fer_ray.orchestrate.spec import load_spec
    from fer_ray.orchestrate.tracking import Tracker

    tracker = Tracker(uri, "fer_ray")
    parent = _runs(uri).query("`tags.fer_ray.role` == 'parent'")["run_id"].iloc[0]
    table = trial_table(
        load_spec(SWEEPS / "hpo.yaml", ["search.optuna.space.train.lr={loguniform: [0.00001, 0.003]}"]),
        tracker,
        tracker.child_runs(parent),
        workdir / "fetched",
    )
    by_run = {record.run_id: record for record in table}
    for _, child in children.iterrows():
        record = by_run[child["run_id"]]
        expected = TrialStatus.FINISHED if child["status"] == "FINISHED" else TrialStatus.STOPPED
        assert record.status == expected
        assert record.values["train.lr"] == float(child["params.train.lr"]) and record.trial.train.lr == record.values["train.lr"]
        assert len(record.history["val_acc"]) == len(mlflow.MlflowClient(uri).get_metric_history(child["run_id"], "val_acc"))

    # the search report ranks every trial (stopped ones marked) and picks the best FINISHED trial on
    # val_acc alone; its test accuracy and val_acc go on the parent run
    runs = _runs(uri)
    parent = runs[runs["tags.fer_ray.role"] == "parent"].iloc[0]
    finished = children[children["status"] == "FINISHED"]
    best = finished.sort_values("start_time").loc[finished["metrics.val_acc"].idxmax()]
    assert parent["metrics.best_val_acc"] == pytest.approx(best["metrics.val_acc"])
    assert parent["metrics.best_trial_test_acc"] == pytest.approx(best["metrics.test_acc"])
    report = (workdir / "reports" / "hpo" / "report.md").read_text()
    assert "## Hyper-parameter search" in report and "mean over seeds" not in report
    assert report.count("| stopped early |") == len(stopped)
    summary = pd.read_csv(workdir / "reports" / "hpo" / "summary.csv")
    assert len(summary) == 5 and (summary["status"] == "stopped").sum() == len(stopped)
    assert (workdir / "reports" / "hpo" / "search_history.png").is_file()
