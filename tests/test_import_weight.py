"""What a process imports before it does any work. Every trial process imports the trial module
first; the science stack (torch, torchvision, scikit-learn, matplotlib) is the experiment's to
import, so a sweep pays for what its experiment uses and nothing more (benchmarks/overhead.py
measures the start-up this keeps down)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_fer_ray_imports_rich_only_where_the_live_view_is_drawn():
    """rich (the console's live view) is imported inside console.py's functions, never at the top of a
    module. (Ray Tune 2.60 itself imports rich wherever ``ray.tune`` is imported once rich is
    installed, trial processes included: ~0.1 s, Ray's own.)"""
    package = Path(__file__).resolve().parent.parent / "fer_ray"
    top_level, inside = [], []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "rich" or name.startswith("rich.") for name in names):
                (top_level if node in tree.body else inside).append(path.relative_to(package).as_posix())
    assert top_level == []
    assert set(inside) == {"orchestrate/console.py"}


def test_cli_answers_help_and_spec_errors_without_ray_mlflow_or_torch():
    modules = imported_by("import fer_ray.sweep")
    assert not (SCIENCE_STACK | {"ray", "mlflow"}) & modules


def test_probe_experiment_imports_torch_but_not_the_rest():
    """Importing an experiment loads no science stack (tests/test_experiment_contract.py); what its
    trial uses comes on first use: the probe's device and torch, nothing else."""
    assert "torch" not in imported_by("import fer_ray.experiments.probe")
    modules = imported_by("import fer_ray.experiments.probe as probe; probe.core_device.pick_device(); probe.torch.zeros(1)")
    assert "torch" in modules
    assert not {"torchvision", "sklearn", "matplotlib", "mlflow", "ray"} & modules
