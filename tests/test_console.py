"""The sweep's console (fer_ray.orchestrate.console): trial names, the live view, the plain lines and
the end summary.

The rendering tests draw the views of a made-up trial table (rich's Console(record=True)); the
end-to-end tests run sweeps as a subprocess whose output is not a terminal, as CI and log files see
it, with real Ray and MLflow, and read the trials' run names back through the MLflow client.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from conftest import TINY
from fer_ray.experiments import get_experiment
from fer_ray.orchestrate.console import (
    DONE,
    PENDING,
    RUNNING,
    SweepConsole,
    SweepProgress,
    TrialLine,
    clock,
    live_view,
    summary_table,
)
from fer_ray.orchestrate.spec import resolve_spec
from fer_ray.orchestrate.trial import run_name, short_keys

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"


# ------------------------------------------------------------------------------- trial names


def test_trial_names_put_what_varies_first_and_name_models_by_their_training_seed():
    spec = resolve_spec({"name": "n", "experiment": "noise", "source": {"train_seeds": [3, 5]}}, [])
    models = ["runs:/54efe0000aaaa/model", "runs:/99abc0000bbbb/model"]
    sweep = spec.model_copy(
        update={
            "search": spec.search.model_copy(
                update={"grid": {"source.model": models, "settings.batch_size": [64], "settings.noise_seed": [0, 1, 2]}}
            )
        }
    )
    config = {"source.model": models[1], "settings.batch_size": 64, "settings.noise_seed": 2}
    assert run_name(config, sweep) == "train_seed=5,noise_seed=2,batch_size=64"
    one_model = sweep.model_copy(
        update={"search": sweep.search.model_copy(update={"grid": {**sweep.search.grid, "source.model": models[:1]}})}
    )
    one_model = one_model.model_copy(update={"source": one_model.source.model_copy(update={"train_seeds": [3]})})
    assert run_name({**config, "source.model": models[0]}, one_model) == "noise_seed=2,train_seed=3,batch_size=64"


def test_trial_names_of_other_model_sources_and_sampled_values():
    spec = resolve_spec({"name": "n", "experiment": "fgsm", "source": {"model": "models:/fer/3"}}, [])
    assert run_name({"source.model": "models:/fer/3"}, spec) == "model=fer/3"
    assert run_name({"source.model": "runs:/54efe0000aaaa/model"}, spec) == "model=run 54efe000"
    assert run_name({"source.model": "/data/models/best.pt"}, spec) == "model=best.pt"
    hpo = resolve_spec(
        {
            "name": "h",
            "experiment": "finetune",
            "search": {
                "optuna": {"metric": "val_acc", "mode": "max", "num_samples": 2, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
            },
        },
        [],
    )
    assert run_name({"train.lr": 0.0021503467431, "train.seed": 0}, hpo) == "lr=0.00215,seed=0"
    assert run_name({"train.lr": 0.001, "model.head": [512, 128]}, hpo) == "lr=0.001,head=[512,128]", "no blank in a name"
    assert run_name({}, hpo) == "trial"


def test_trial_names_tell_keys_with_the_same_last_part_apart():
    spec = resolve_spec({"name": "n", "experiment": "finetune"}, [])
    config = {"data.split.seed": 1, "train.seed": 0, "train.lr": 0.001, "train.augment.enabled": False}
    assert run_name(config) == "split.seed=1,train.seed=0,lr=0.001,augment.enabled=False"
    assert run_name({"train.seed": 0, "train.augment.enabled": True}, spec) == "seed=0,augment.enabled=True"
    assert short_keys(["a.x.seed", "b.x.seed", "c.seed"]) == {"a.x.seed": "a.x.seed", "b.x.seed": "b.x.seed", "c.seed": "c.seed"}


# ------------------------------------------------------------------------------- views


def _made_up_progress(now: float) -> SweepProgress:
    progress = SweepProgress(total=4, started=now - 80)
    progress.lines["a"] = TrialLine("lr=0.001,seed=0", DONE, 8, 8, {"val_acc": 0.625, "test_acc": 0.5, "test_macro_f1": 0.4375, "epoch": 8})
    progress.lines["b"] = TrialLine("lr=0.0003,seed=0", RUNNING, 4, 8, {"val_acc": 0.375, "train_loss": 1.25})
    progress.lines["c"] = TrialLine("lr=0.001,seed=1", PENDING, None, 8)
    return progress


def test_live_view_shows_each_trial_by_name_with_status_epoch_metrics_and_an_eta():
    now = time.time()
    progress = _made_up_progress(now)
    console = Console(record=True, width=120, color_system=None)
    console.print(live_view(progress, get_experiment("finetune"), now, "Sweep quickstart (finetune)"))
    lines = console.export_text().splitlines()

    assert lines[0].startswith("Sweep quickstart (finetune)")
    assert lines[1].split() == ["trial", "status", "epoch", "val_acc", "test_acc", "test_macro_f1"]
    assert lines[2].split() == ["lr=0.001,seed=0", "done", "epoch", "8/8", "0.625", "0.5", "0.4375"]
    assert lines[3].split() == ["lr=0.0003,seed=0", "running", "epoch", "4/8", "0.375", "-", "-"]
    assert lines[4].split() == ["lr=0.001,seed=1", "pending", "-", "-", "-"]
    # 1.5 of 4 trials done in 80 s: 80 * 2.5 / 1.5 = 133 s left
    assert lines[5].endswith("1/4 trials done  elapsed 1:20  ETA 2:13")
    assert "train_loss" not in console.export_text(), "only the experiment's summary metrics"


def test_clock_and_eta_before_anything_is_done():
    assert [clock(5), clock(65), clock(3725), clock(None)] == ["0:05", "1:05", "1:02:05", "?"]
    progress = SweepProgress(total=2, started=100.0)
    progress.lines["a"] = TrialLine("x", RUNNING)
    assert progress.eta(now=150.0) is None


def test_plain_view_writes_an_epoch_line_per_quarter_of_a_trial_not_per_epoch():
    spec = resolve_spec({"name": "q", "experiment": "finetune"}, [])

    def printed_epochs(console: SweepConsole, epochs: int | None) -> list[int]:
        line = TrialLine("lr=0.001,seed=0", RUNNING, epochs=epochs, last_printed=time.monotonic())
        printed = []
        for epoch in range(1, 9):
            line.epoch = epoch
            if console._epoch_line_due(line):
                printed.append(epoch)
                line.last_printed = time.monotonic()
        return printed

    assert printed_epochs(SweepConsole(spec, min_interval_s=0.0), epochs=8) == [2, 4, 6], "the last one: the end line says it"
    assert printed_epochs(SweepConsole(spec, min_interval_s=0.0, heartbeat_s=0.0), epochs=8) == [1, 2, 3, 4, 5, 6, 7]
    assert printed_epochs(SweepConsole(spec, min_interval_s=60.0, heartbeat_s=0.0), epochs=8) == [], "never two within min_interval_s"
    assert printed_epochs(SweepConsole(spec, min_interval_s=0.0), epochs=None) == [], "no count: only the heartbeat"


def test_evaluation_summary_shows_the_experiments_metric_per_varied_value():
    rows = [
        {
            "name": "noise_seed=0,train_seed=0",
            "status": "done",
            "metrics": {"test_acc": 0.8125, "acc_var_0.1": 0.6875, "acc_var_0.1/subject_ci_low": 0.5, "val_acc": 0.9},
        },
        {"name": "noise_seed=1,train_seed=0", "status": "error", "metrics": {}},
    ]
    lines = summary_table(rows, get_experiment("noise"))
    assert lines[0].split() == ["trial", "status", "acc_var_0.1", "test_acc"]
    assert lines[2].split() == ["noise_seed=0,train_seed=0", "done", "0.6875", "0.8125"]
    assert lines[3].split() == ["noise_seed=1,train_seed=0", "error", "-", "-"]


def test_metrics_of_one_pattern_share_a_header_and_sort_by_number():
    eps = {"acc_eps_0.1": 0.05, "acc_eps_0.005": 0.6, "acc_eps_0": 0.8, "acc_eps_0.01": 0.5, "acc_eps_0.01/pgd": 0.4, "test_acc": 0.8}
    lines = summary_table([{"name": "train_seed=0", "status": "done", "metrics": eps}], get_experiment("fgsm"))
    assert lines[0].split() == ["acc_eps_*"]
    assert lines[1].split() == ["trial", "status", "0", "0.005", "0.01", "0.1"]
    assert lines[0].index("acc_eps_*") == lines[1].index("status") + len("status") + 3, "the shared header starts over its columns"
    assert lines[3].split() == ["train_seed=0", "done", "0.8000", "0.6000", "0.5000", "0.0500"]


# ------------------------------------------------------------------------------- end to end


def _sweep(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m fer_ray.sweep ARGS`` with stdout and stderr to one pipe (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FER_RAY_VERBOSE", None)
    return subprocess.run(
        [sys.executable, "-m", "fer_ray.sweep", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("quiet", "bar"),
    [
        ("", True),  # MLflow's default: a tqdm bar on stderr for every artifact folder downloaded
        ("from fer_ray.orchestrate.console import quiet_console; quiet_console()", False),  # the driver
        ("from fer_ray.orchestrate.trial import quiet_trial_logs; quiet_trial_logs()", False),  # a trial, on any node
    ],
    ids=["mlflow-default", "driver", "trial"],
)
def test_mlflow_download_bars_stay_off_the_console(quiet, bar, tmp_path):
    """A real download from a real (sqlite) tracking store, in a fresh process as the driver and the
    trials run it."""
    code = (
        "import pathlib, sys, mlflow\n"
        f"{quiet}\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "path = pathlib.Path(sys.argv[2]) / 'counts.json'\n"
        "path.write_text('{}')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_artifact(str(path), 'test_confusion')\n"
        "mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path='test_confusion', dst_path=sys.argv[2] + '/down')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    done = subprocess.run(
        [sys.executable, "-c", code, f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "down" / "test_confusion" / "counts.json").exists()
    assert ("Downloading artifacts" in done.stderr) is bar, done.stderr[-3000:]


@pytest.mark.parametrize(
    ("quiet", "shown"), [("", True), ("from fer_ray.orchestrate.console import quiet_console; quiet_console()", False)]
)
def test_tunes_slow_operation_warnings_stay_off_the_console(quiet, shown):
    """Ray Tune's own warn_if_slow (on a fresh interpreter, past Tune's 60-s start-up grace)."""
    code = (
        "import logging, ray.tune.utils.util as util\n"
        f"{quiet}\n"
        "logging.basicConfig()\n"
        "util.START_OF_TIME -= 120\n"
        "with util.warn_if_slow('process_trial_save', threshold=1e-9):\n"
        "    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("process_trial_save" in done.stderr) is shown, done.stderr[-3000:]


@pytest.mark.slow
def test_plain_console_of_a_sweep_names_trials_as_mlflow_does(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _sweep([str(SWEEPS / "quickstart.yaml"), "--set", *TINY, "search.seeds=[0]", "--tracking-uri", uri, "--num-cpus", "2"], tmp_path)
    out = done.stdout
    assert done.returncode == 0, out[-4000:]
    lines = out.splitlines()
    assert len(lines) <= 30, out
    assert "== Status ==" not in out and "Downloading artifacts" not in out and "INFO" not in out, out
    assert "run_trial_" not in out, "Ray's trial names never reach the console"

    children = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()], "tags.`fer_ray.role` != 'parent'"
    )
    mlflow_names = {run.info.run_name for run in children}
    assert mlflow_names == {"lr=0.001,seed=0", "lr=0.0003,seed=0"}
    event = re.compile(r"^\[\d+:\d\d\] (\S+): (started|epoch \d+/2.*|done .*)$")
    events = [event.match(line).groups() for line in lines if event.match(line)]
    assert {name for name, what in events if what == "started"} == mlflow_names
    assert {name for name, what in events if what.startswith("done ")} == mlflow_names
    assert all("val_acc" in what and "test_acc" in what for _, what in events if what.startswith("done "))
    assert any(what.startswith("done ") and "1/2 trials done" in what for _, what in events)
    header = lines.index(next(line for line in lines if line.split()[:2] == ["trial", "status"]))
    table_names = {line.split()[0] for line in lines[header + 2 : header + 4]}
    assert table_names == mlflow_names, "the end summary names the trials as MLflow does"


@pytest.mark.slow
def test_verbose_adds_tunes_status_table_and_info_logs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        str(SWEEPS / "probe.yaml"),
        "--set",
        "search.grid={settings.value: [1]}",
        "settings.steps=2",
        "--tracking-uri",
        uri,
        "--num-cpus",
        "1",
    ]
    done = _sweep([*args, "--verbose"], tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "== Status ==" in done.stdout and "Started a local Ray instance" in done.stdout
    assert re.search(r"^\[\d+:\d\d\] value=1,seed=0: done ", done.stdout, re.MULTILINE), "the sweep's own lines too"


def test_optuna_sweeps_keep_optunas_list_choice_warning_and_info_line_off_the_console(monkeypatch):
    """hpo.yaml searches list-valued choices (model.head); Optuna warns about each when its study is
    built, and logs the study's creation at INFO: both used to land between the sweep's lines."""
    import warnings

    import optuna

    from fer_ray.orchestrate.spec import load_spec
    from fer_ray.orchestrate.trial import VERBOSE_ENV
    from fer_ray.orchestrate.tune import _tune_config

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    level = optuna.logging.get_verbosity()
    try:
        _tune_config(load_spec(SWEEPS / "hpo.yaml", ["resources.gpu=0"]))
        with warnings.catch_warnings(record=True) as caught:
            optuna.distributions.CategoricalDistribution([[512], [512, 128]])
        assert not [w for w in caught if "categorical distribution" in str(w.message)]
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    finally:
        optuna.logging.set_verbosity(level)
