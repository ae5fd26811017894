"""What a process imports before it does any work. Every trial process imports the trial module
first; the science stack (torch, torchvision, scikit-learn, matplotlib) is the experiment's to
import, so a sweep pays for what its experiment uses and nothing more (benchmarks/overhead.py
measures the start-up this keeps down)."""

from __future__ import annotations

import subprocess
import sys

SCIENCE_STACK = {"torch", "torchvision", "sklearn", "matplotlib"}


def imported_by(statement: str) -> set[str]:
    """Top-level packages in sys.modules after running ``statement`` in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(result.stdout.split())


def test_trial_module_leaves_the_science_stack_to_the_experiment():
    modules = imported_by("import fer_ray.orchestrate.trial")
    assert {"fer_ray", "mlflow", "ray"} <= modules
    assert not SCIENCE_STACK & modules


def test_cli_answers_help_and_spec_errors_without_ray_mlflow_or_torch():
    modules = imported_by("import fer_ray.sweep")
    assert not (SCIENCE_STACK | {"ray", "mlflow"}) & modules


def test_probe_experiment_imports_torch_but_not_the_rest():
    modules = imported_by("import fer_ray.experiments.probe")
    assert "torch" in modules
    assert not {"torchvision", "sklearn", "matplotlib", "mlflow", "ray"} & modules
