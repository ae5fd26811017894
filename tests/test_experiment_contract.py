"""Every registered experiment keeps the contract (fer_ray.experiments.contract), and the layers keep
their import boundaries (a static scan of the source files: nothing is imported to check)."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_ray.core.lazy_import import lazy_module
from fer_ray.experiments import REGISTRY, evaluates_model, experiment_names, get_experiment, settings_model
from fer_ray.experiments.base import Trial
from fer_ray.experiments.contract import Experiment
from fer_ray.experiments.results import Report, TrialTable
from fer_ray.orchestrate.spec import load_spec, resolve_spec, trial_of

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"


def _sweep_files() -> dict[str, list[Path]]:
    """experiment kind -> the sweep files that run it."""
    files: dict[str, list[Path]] = {}
    for path in sorted(SWEEPS.glob("*.yaml")):
        files.setdefault(yaml.safe_load(path.read_text())["experiment"], []).append(path)
    return files


@pytest.mark.parametrize("name", experiment_names())
def test_registered_experiment_describes_itself(name):
    experiment = get_experiment(name)
    assert isinstance(experiment, Experiment) and experiment.name == name
    experiment.settings.model_validate({})  # the defaults validate: a sweep file may omit the section
    assert experiment.settings is settings_model(name) and experiment.evaluates_model == evaluates_model(name)
    run = inspect.signature(experiment.run)
    assert list(run.parameters) == ["trial", "reporter"], f"{REGISTRY[name]}.run{run}"
    if experiment.report is not None:
        report = inspect.signature(experiment.report)
        assert len(report.parameters) == 1, f"{REGISTRY[name]}.report{report}: takes the TrialTable alone"
        annotation = next(iter(report.parameters.values())).annotation
        assert annotation in (TrialTable, "TrialTable") and report.return_annotation in (Report, "Report")
    for path in experiment.report_artifacts:
        assert "/" in path and not path.startswith("/"), f"{name}: artifact paths are folder/file, got {path!r}"
    # what the console and the end summary show: metric names (or patterns) MLflow accepts
    assert experiment.summary_metrics, f"{name}: no summary metrics"
    for pattern in experiment.summary_metrics:
        assert re.fullmatch(r"[A-Za-z0-9_\-./: *]+", pattern), f"{name}: summary metric {pattern!r}"
    if experiment.epochs is not None:  # the console's "epoch n/N"
        epochs = experiment.epochs(trial_of(resolve_spec({"name": "t", "experiment": name}, [])))
        assert isinstance(epochs, int) and epochs >= 1, f"{name}: epochs {epochs!r}"


def test_every_experiment_module_imports_its_science_stack_only_when_a_trial_or_report_runs():
    """A sweep file is validated with its experiment's Settings, so importing an experiment module
    (which ``--dry-run`` and every spec error do) must not load torch, scikit-learn, matplotlib,
    pandas or scipy: seconds each on 2 cores. One fresh interpreter imports them all."""
    heavy = {"torch", "torchvision", "sklearn", "matplotlib", "pandas", "scipy"}
    modules = " ".join(REGISTRY[name] for name in experiment_names())
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}.split(): importlib.import_module(name).EXPERIMENT\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert not heavy & loaded, f"importing the experiment modules loads {sorted(heavy & loaded)}"
    assert "fer_ray" in loaded


def test_a_lazy_module_imports_on_first_use_and_names_a_missing_module_then():
    code = (
        "import sys\n"
        "from fer_ray.core.lazy_import import lazy_module\n"
        "stats = lazy_module('fer_ray.core.stats')\n"
        "before = 'fer_ray.core.stats' in sys.modules\n"
        "value = stats.mean_ci([0.5, 0.7, 0.6])['mean']\n"
        "print(before, 'fer_ray.core.stats' in sys.modules, round(value, 3))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True", "0.6"]
    with pytest.raises(ModuleNotFoundError, match="fer_ray.core.no_such_module"):
        lazy_module("fer_ray.core.no_such_module").anything


def test_summary_patterns_select_metric_names_by_number_and_stop_at_slashes():
    experiment = get_experiment("fgsm")
    names = ["acc_eps_0.1", "acc_eps_0.01", "acc_eps_0.005", "acc_eps_0", "acc_eps_0.01/subject_ci_low", "test_acc"]
    assert experiment.summary_columns(names) == ["acc_eps_0", "acc_eps_0.005", "acc_eps_0.01", "acc_eps_0.1"]
    assert get_experiment("finetune").summary_columns(["test_macro_f1", "val_acc", "train_loss"]) == ["val_acc", "test_macro_f1"]


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_has_a_sweep_file_that_validates(name):
    files = _sweep_files().get(name, [])
    assert files, f"experiment {name}: no sweep file in sweeps/ runs it"
    for path in files:
        spec = load_spec(path)
        trial = trial_of(spec)
        assert isinstance(trial.settings, get_experiment(name).settings)


@pytest.mark.parametrize("name", experiment_names())
def test_evaluates_model_agrees_with_what_the_trial_needs(name, tmp_path):
    """An evaluation experiment refuses a trial without a model, naming source.model; a training one
    gets no model_source from the spec (the orchestrator fetches no model for it)."""
    experiment = get_experiment(name)
    spec = resolve_spec({"name": "t", "experiment": name}, [])
    trial = trial_of(spec)
    if experiment.evaluates_model:
        assert trial.model_source == spec.source.model
        with pytest.raises(ValueError, match="source.model"):
            experiment.run(trial, _NoReporter(tmp_path))
    else:
        assert trial.model_source is None and trial.model_file is None


class _NoReporter:
    """A Reporter that fails the test if the trial reports anything before checking its model."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir

    def __getattr__(self, name):
        raise AssertionError(f"the trial called reporter.{name} before checking for its model")


def test_unknown_kind_is_a_key_error_and_the_registry_names_modules_of_the_package():
    with pytest.raises(KeyError):
        get_experiment("no-such-experiment")
    assert all(module == f"fer_ray.experiments.{name}" for name, module in REGISTRY.items())
    assert isinstance(trial_of(resolve_spec({"name": "t", "experiment": "probe"}, [])), Trial)


# --------------------------------------------------------------------------- import boundaries


def _imports(path: Path, root: Path) -> set[str]:
    """Every module a source file imports (absolute names; relative imports resolved from ``root``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_module" and node.args:
            names.add(ast.literal_eval(node.args[0]))  # an import on first use (core/lazy_import.py) is an import
    return names


def _violations(folder: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / "fer_ray" / folder).rglob("*.py")):
        for name in sorted(_imports(path, root)):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_core_imports_no_ray_mlflow_experiments_or_orchestrator():
    assert _violations("core", ("ray", "mlflow", "fer_ray.experiments", "fer_ray.orchestrate", "fer_ray.sweep")) == []


def test_experiments_import_no_orchestrator_sweep_ray_or_mlflow():
    assert _violations("experiments", ("fer_ray.orchestrate", "fer_ray.sweep", "ray", "mlflow")) == []


def test_the_scan_sees_a_forbidden_import(tmp_path):
    """The scan itself: an import it must catch, in all three spellings (lazy_module's included)."""
    (tmp_path / "fer_ray" / "core" / "data").mkdir(parents=True)
    (tmp_path / "fer_ray" / "core" / "data" / "x.py").write_text(
        "import ray\nfrom mlflow import MlflowClient\nfrom ...orchestrate import spec\ntracking = lazy_module('fer_ray.orchestrate.tracking')\n"
    )
    assert _violations("core", ("ray", "mlflow", "fer_ray.orchestrate"), root=tmp_path) == [
        "fer_ray/core/data/x.py imports fer_ray.orchestrate",
        "fer_ray/core/data/x.py imports fer_ray.orchestrate.tracking",
        "fer_ray/core/data/x.py imports mlflow",
        "fer_ray/core/data/x.py imports mlflow.MlflowClient",
        "fer_ray/core/data/x.py imports ray",
    ]
