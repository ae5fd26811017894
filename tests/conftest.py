"""Shared fixtures: tiny synthetic KDEF-format faces, a tiny trained model, a real `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: CUDA-only correctness tests (tests/gpu, run by benchmarks/gpu.sh) are collected only where torch
#: sees a CUDA device; elsewhere pytest does not collect them at all (not skipped: absent). Declared
#: here, not in a tests/gpu/conftest.py: a second module named conftest would shadow this one for the
#: tests that import TINY from it.
collect_ignore_glob = [] if __import__("torch").cuda.is_available() else ["gpu/test_*.py"]

# Keep the suite's caches out of the user's home and single-threaded torch fast on 2 cores.
os.environ.setdefault("FER_RAY_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test"))


def _torch_threads_per_worker() -> int:
    """Intra-op torch threads for this pytest process: the machine's cores shared among pytest-xdist's
    workers (``make test`` runs two on 2 cores: one each). torch's default, every core in every
    worker, oversubscribes them: measured on 2 cores, the ResNet-18 learning test took 378 s beside
    the other worker against 14 CPU-s alone on one thread."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


if "PYTEST_XDIST_WORKER" in os.environ:
    __import__("torch").set_num_threads(_torch_threads_per_worker())


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``), the ``slow`` tests form one
    group that one worker runs one after another: two end-to-end sweeps never start Ray at the same
    time (each would take both cores), while the other worker runs the unit tests beside them."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("end_to_end"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic KDEF folder: 12 people per gender, sessions A+B, straight-on, 64x88 px."""
    from fer_ray.core.config import SyntheticConfig
    from fer_ray.core.data.synthetic import generate_synthetic_kdef

    root = tmp_path_factory.mktemp("synthetic_kdef")
    generate_synthetic_kdef(root, SyntheticConfig(identities=12, width=64, height=88, seed=0))
    return root


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    """An empty tensor-cache folder for one test."""
    path = tmp_path / "cache"
    path.mkdir()
    return path


#: ``--set`` overrides that make any sweep file tiny: seconds per trial on 2 cores. The faces are the
#: embedded default's generator at 64x88 px, 6 people per gender, decoded at 32 px.
TINY = [
    "data.image_size=32",
    "data.synthetic.identities=6",
    "data.synthetic.width=64",
    "data.synthetic.height=88",
    "data.split.val=0.2",
    "data.split.test=0.2",
    "model.arch=resnet18",
    "model.weights=none",
    "model.head=[32]",
    "model.trainable=all",
    "train.epochs=2",
    "train.batch_size=32",
    "train.patience=null",
]


@dataclass(frozen=True)
class TinyTraining:
    """One fine-tuning trial on the TINY data, run once per session: the trial, its LocalReporter
    (folder = reporter.work_dir, artifacts, figures) and the metrics run() returned."""

    trial: object
    reporter: object
    metrics: dict


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory) -> TinyTraining:
    """finetune.run (2 epochs, no Ray/MLflow) on the TINY data, shared by the session: the tests of
    the fine-tuning trial read it, and tiny_trained_model is its model file."""
    from fer_ray.experiments import finetune
    from fer_ray.experiments.base import LocalReporter, Trial
    from fer_ray.orchestrate.spec import resolve_spec

    spec = resolve_spec({"name": "tiny", "experiment": "finetune"}, TINY)
    reporter = LocalReporter(tmp_path_factory.mktemp("tiny_model"))
    trial = Trial(sweep="tiny", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings())
    return TinyTraining(trial=trial, reporter=reporter, metrics=finetune.run(trial, reporter))


@pytest.fixture(scope="session")
def tiny_trained_model(tiny_training) -> Path:
    """A fer_ray model file trained (2 epochs, no Ray/MLflow) on the TINY data; evaluation
    experiments' tests load it as ``source.model=<path>`` with the same TINY data overrides."""
    from fer_ray.experiments import finetune

    return tiny_training.reporter.work_dir / finetune.MODEL_FILE


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    """A real ``mlflow server`` process on 127.0.0.1: sqlite backend, artifacts proxied to ``artifacts``."""

    uri: str
    artifacts: Path
    process: subprocess.Popen

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the server (and its workers) for the block: a trial blocks at its next MLflow call,
        so it stays mid-run, however fast it trains, until the block ends."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """One server for the session; tests keep apart by experiment name."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    artifacts = folder / "artifacts"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", artifacts=artifacts, process=process)
    try:
        _wait_healthy(server, timeout_s=90)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "mlflow server exited during start-up"
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"mlflow server at {server.uri} not healthy after {timeout_s}s")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-tensor tests (faster than two on a busy 2-core
    machine); the previous count is restored after the module. Use: pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
