"""The command line's exit status, as a shell or CI sees it: run in a subprocess, the console script too.

0 ``--help`` (and a finished sweep), 2 usage and spec errors (nothing started), 1 a failure while
running (here: the tracking server is down), 130 interrupted (tests/test_sweep.py sends the SIGINT).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"
MODULE = [sys.executable, "-m", "fer_ray.sweep"]
CONSOLE_SCRIPT = Path(sys.executable).parent / "fer-ray-sweep"  # installed by `pip install -e .`


def _run(command: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's fer_ray, also for the console script
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [MODULE, [str(CONSOLE_SCRIPT)]], ids=["python-m", "fer-ray-sweep"])
def test_help_exits_0(command, tmp_path):
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT}: the console script of pyproject.toml is not installed"
    done = _run([*command, "--help"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--resume" in done.stdout
    assert "130 interrupted" in " ".join(done.stdout.split())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "the following arguments are required: spec"),
        ([str(QUICKSTART), "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        ([str(QUICKSTART), "--num-cpus", "two"], "invalid int value: 'two'"),
    ],
    ids=["no-spec", "unknown-flag", "bad-type"],
)
@pytest.mark.parametrize("command", [MODULE, [str(CONSOLE_SCRIPT)]], ids=["python-m", "fer-ray-sweep"])
def test_usage_errors_exit_2(command, arguments, message, tmp_path):
    done = _run([*command, *arguments], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "usage:" in done.stderr and message in done.stderr


def test_spec_error_exits_2_before_anything_starts(tmp_path):
    done = _run([*MODULE, str(QUICKSTART), "--set", "train.lrr=0.1"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "train.lrr" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no mlflow.db, ray_results or reports"


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../reports"])
def test_unsafe_sweep_names_are_refused_with_exit_2(name, tmp_path):
    """The name becomes the report folder: '..' would make it the working directory, uploaded whole."""
    spec = yaml.safe_load(QUICKSTART.read_text()) | {"name": name}
    path = tmp_path / "unsafe.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = _run([*MODULE, str(path), "--dry-run"], tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "unsafe.yaml: name:" in done.stderr and repr(name) in done.stderr


@pytest.mark.parametrize("name", ["quickstart", "noise_sig-v2", "run.3", "_scratch"])
def test_safe_sweep_names_still_load(name):
    from fer_ray.orchestrate.spec import load_spec

    assert load_spec(QUICKSTART, [f"name={name}"]).name == name


@pytest.mark.slow  # starts Ray or an MLflow server: out of `make test-fast`
def test_tracking_server_down_exits_1(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    done = _run([*MODULE, str(QUICKSTART), "--num-cpus", "1", "--tracking-uri", uri], tmp_path, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert uri in done.stderr


def test_the_printed_ui_lines_work_as_typed_and_open_the_model_training_view(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from fer_ray.orchestrate.driver import ui_hint

    monkeypatch.chdir(Path(sys.executable).parent.parent.parent)  # the folder that holds the venv
    command, page = ui_hint("sqlite:////data/mlflow.db", "7")
    mlflow_exe = command.split()[2]
    assert (Path.cwd() / mlflow_exe).is_file() or mlflow_exe == "mlflow", command
    assert command.endswith("ui --backend-store-uri sqlite:////data/mlflow.db")
    assert page.strip() == "then open http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    [remote] = ui_hint("http://10.1.2.3:5000", "3")
    assert remote.strip() == "compare trials:  open http://10.1.2.3:5000/#/experiments/3/runs?workflowType=machine_learning"
