"""benchmarks/gpu.sh on a machine without CUDA, and the CUDA-only tests' absence here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def test_gpu_check_says_in_one_line_there_is_no_cuda_and_exits_0():
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "no CUDA device" in done.stdout and not done.stderr


def test_gpu_check_without_torch_says_so_and_fails():
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": "/bin/false"},
        timeout=60,
    )
    assert done.returncode == 1 and "cannot import torch" in done.stderr


def test_cuda_only_tests_are_not_collected_without_cuda():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", str(REPO / "tests" / "gpu")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 5 and "no tests collected" in done.stdout, done.stdout  # 5: nothing collected


def test_concurrency_count_of_run_intervals():
    spec = importlib.util.spec_from_file_location("sweep_runs", REPO / "benchmarks" / "sweep_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.max_overlap([(0, 10), (5, 15), (10, 20)]) == 2  # touching ends do not overlap
    assert module.max_overlap([(0, 10), (1, 9), (2, 8), (20, 30)]) == 3
    assert module.max_overlap([]) == 0


@pytest.mark.slow  # starts Ray or an MLflow server: out of `make test-fast`
def test_trial_gpu_ids_name_the_shared_gpu_of_fractional_trials():
    import ray

    from fer_ray.orchestrate.trial import gpu_ids

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, address="local")  # a fake GPU: Ray only counts it
    try:
        quarter = ray.remote(num_gpus=0.25, num_cpus=0)(gpu_ids)
        assert ray.get([quarter.remote() for _ in range(4)]) == ["0"] * 4
        assert ray.get(ray.remote(num_cpus=1)(gpu_ids).remote()) == ""
    finally:
        ray.shutdown()
