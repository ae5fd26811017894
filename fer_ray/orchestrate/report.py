"""After a sweep: gather its child runs from MLflow, aggregate over seeds, draw, publish.

The report is built from MLflow alone (``Tracker.children``), so it holds exactly the numbers the
MLflow UI shows. Per grid point: mean and 95 % CI over seeds (Student t). Outputs go to
``reports/<sweep>/`` (report.md, summary.csv, PNGs) and to the parent run's artifacts.
"""

from __future__ import annotations

import inspect
import itertools
import json
import shutil
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from fer_ray.core.plots import metric_curve_figure
from fer_ray.core.stats import mean_ci
from fer_ray.experiments import load_experiment
from fer_ray.orchestrate.spec import SweepSpec
from fer_ray.orchestrate.tracking import Tracker

#: metrics summarised when a run has them, in this order
REPORT_METRICS = ("test_acc", "test_macro_f1", "val_acc", "n_params")
#: where report hooks' downloaded artifacts stay while the report is written (inside its folder)
FETCHED = ".artifacts"


def write_report(spec: SweepSpec, tracker: Tracker, parent_id: str, out_dir: Path) -> Path | None:
    """Aggregate the parent's finished child runs; write and log the report. None if no run finished."""
    runs = tracker.children(parent_id)
    if runs.empty:
        return None
    runs = runs[runs["status"] == "FINISHED"]
    if runs.empty:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    # seeds (and, for evaluation sweeps, the models trained with different seeds) are what the
    # mean and CI run over; every other grid key is a row of the table
    grid = {k: v for k, v in spec.search.grid.items() if k not in ("train.seed", "source.model")}
    keys = list(grid)
    table = aggregate(runs, grid)
    table.to_csv(out_dir / "summary.csv", index=False)
    experiment = load_experiment(spec.experiment)
    if hasattr(experiment, "report"):  # the experiment's own tables, statistics and figures replace the generic table
        extra_markdown, figures, *extra_metrics = experiment.report(runs, spec, **_hook_extras(experiment.report, tracker, out_dir))
        if extra_metrics:  # sweep-level numbers (e.g. the SVM's refit test accuracy) on the parent run
            tracker.log_metrics(parent_id, extra_metrics[0])
        markdown = _header(spec, runs) + "\n" + extra_markdown + "\n" + "".join(f"![{name}]({name})\n" for name in figures)
    else:
        figures = _figures(table, keys)
        markdown = _header(spec, runs) + _table_markdown(table, keys) + "\n\n" + "".join(f"![{name}]({name})\n" for name in figures)
    shutil.rmtree(out_dir / FETCHED, ignore_errors=True)
    for name, figure in figures.items():
        figure.savefig(out_dir / name, dpi=120, bbox_inches="tight")
    (out_dir / "report.md").write_text(markdown)
    print(markdown)
    for path in sorted(out_dir.iterdir()):
        tracker.log_artifact(parent_id, path, "report")
    return out_dir


def _hook_extras(hook, tracker: Tracker, out_dir: Path) -> dict:
    """``fetch`` for a report hook that declares it: artifacts of the sweep's runs, downloaded through
    the tracking server into ``out_dir/.artifacts/<run id>/`` (removed once the report is written)."""
    if "fetch" not in inspect.signature(hook).parameters:
        return {}

    def fetch(run_id: str, artifact_path: str) -> Path | None:
        try:
            return tracker.download_artifact(run_id, artifact_path, out_dir / FETCHED / run_id)
        except (MlflowException, OSError):  # no such artifact (each store says so its own way)
            return None

    return {"fetch": fetch}


def aggregate(runs: pd.DataFrame, grid: dict[str, list]) -> pd.DataFrame:
    """One row per grid point, in the order the sweep file lists the values: mean, CI low/high of
    each metric over the runs of that point (seeds / models), and their count."""
    keys = list(grid)
    metrics = [m for m in REPORT_METRICS if f"metrics.{m}" in runs.columns]
    rows = []
    for point in itertools.product(*grid.values()):
        group = runs
        for key, value in zip(keys, point):
            group = group[_matches(group[f"params.{key}"], value)]
        if group.empty:
            continue
        row = dict(zip(keys, point))
        for metric in metrics:
            summary = mean_ci(group[f"metrics.{metric}"].astype(float))
            row.update({metric: summary["mean"], f"{metric}_low": summary["low"], f"{metric}_high": summary["high"]})
        row["n_seeds"] = len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def _matches(params: pd.Series, value) -> pd.Series:
    """Rows whose MLflow param (text) holds grid ``value``: numbers compare as numbers (YAML's 1 is
    the spec's 1.0), lists as the JSON text tracking.flatten writes, the rest as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return pd.to_numeric(params, errors="coerce") == float(value)
    if isinstance(value, (list, tuple)):
        return params == json.dumps(list(value), sort_keys=True, default=str)
    return params == str(value)


def _figures(table: pd.DataFrame, keys: list[str]) -> dict[str, object]:
    """The seed's graphs: accuracy vs training fraction, accuracy vs model size (parameters)."""
    if len(keys) != 1 or "test_acc" not in table:
        return {}
    key = keys[0]
    ci = (table["test_acc_low"], table["test_acc_high"])
    if key == "data.train_fraction":
        figure = metric_curve_figure(
            table[key] * 100, table["test_acc"], *ci,
            xlabel="training identities used (%)", ylabel="test accuracy", title="Accuracy vs dataset size",
        )
        return {"accuracy_vs_fraction.png": figure}
    if key == "model.arch" and "n_params" in table:
        figure = metric_curve_figure(
            table["n_params"] / 1e6, table["test_acc"], *ci,
            xlabel="parameters (millions)", ylabel="test accuracy", title="Accuracy vs model size",
            point_labels=list(table[key]),
        )
        return {"accuracy_vs_model_size.png": figure}
    return {}


def _header(spec: SweepSpec, runs: pd.DataFrame) -> str:
    """What was run, on what, split how: the first lines of every sweep report."""
    lines = [
        f"# {spec.name}",
        "",
        spec.description.strip(),
        "",
        f"- experiment: {spec.experiment}; profile: {spec.profile}; finished trials: {len(runs)}",
        f"- data: {spec.data.dataset} at {spec.data.image_size} px; split: {spec.data.split.protocol}",
        f"- model: {spec.model.arch} (weights {spec.model.weights}); {spec.train.epochs} epochs",
        "- cells: mean over seeds [95 % CI, Student t; '-' with one seed]",
        "",
    ]
    return "\n".join(lines) + "\n"


def _table_markdown(table: pd.DataFrame, keys: list[str]) -> str:
    metrics = [m for m in REPORT_METRICS if m in table]
    header = "| " + " | ".join([*keys, *metrics, "seeds"]) + " |"
    lines = [header, "|" + "---|" * (len(keys) + len(metrics) + 1)]
    for _, row in table.iterrows():
        cells = [str(row[k]) for k in keys]
        for metric in metrics:
            cells.append(_cell(row[metric], row[f"{metric}_low"], row[f"{metric}_high"], metric))
        cells.append(str(int(row["n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(mean: float, low: float, high: float, metric: str) -> str:
    if metric == "n_params":
        return f"{mean / 1e6:.1f} M"
    interval = "-" if pd.isna(low) else f"{low:.3f}–{high:.3f}"
    return f"{mean:.3f} [{interval}]"
