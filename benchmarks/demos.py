"""The embedded demos: every shipped sweep on its default (embedded) profile, one after another in one
fresh folder, as a user runs them with ``python -m fer_ray.sweep`` (train-once reuse included: the
first evaluation sweep trains the shared recipe, the others reuse it from MLflow).

Prints one line per sweep: exit code, wall time, the CPU time the whole machine spent meanwhile
(user + system over all cores, from /proc/stat: the driver, Ray's daemons and every trial process,
and anything else running; on a quiet machine that is the sweep's own), the machine's 1-minute load
average when the sweep ended, and the sweep's headline number read back from MLflow (the child runs
of the sweep, tagged ``fer_ray.sweep``). Then the totals against the goals of issue 17: each sweep
<= 180 s and all of them <= 900 s on 2 cores (the ratio printed is wall time / goal; above 1.00
misses it). On a machine shared with other work the wall times grow with the load, and the CPU
column counts the other work too. Between sweeps the script waits (up to 15 s) for the processes
Ray detached to exit (it is their "child subreaper"), so one sweep's daemons do not run into the next.

    python benchmarks/demos.py                                   # all 13, in a temp folder
    python benchmarks/demos.py --only model_size hpo --keep      # some, keeping the folder
    python benchmarks/demos.py --num-cpus 2 --workdir /tmp/demos # a given folder (must be empty)
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parent.parent
#: Training sweeps first, then the evaluation sweeps (the first of them trains the shared recipe).
SWEEPS = (
    "quickstart",
    "dataset_fraction",
    "model_size",
    "hpo",
    "evaluate",
    "noise",
    "noise_sig",
    "epsilon",
    "svm",
    "tsne",
    "saliency",
    "bias",
    "probe",
)
GOAL_PER_SWEEP_S = 180.0
GOAL_TOTAL_S = 900.0
EXPERIMENT = "fer_ray"
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


# --- running one sweep -------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants (Ray's detached processes) children of this process (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(deadline_s: float) -> int:
    """Wait (up to deadline_s) for adopted descendants to exit; returns how many are still running."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0  # no children left
        if pid == 0:
            if time.monotonic() >= end:
                return len(_child_pids())
            time.sleep(0.2)


def _child_pids() -> list[int]:
    me = str(os.getpid())
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # fields after the name: state, ppid, ...
            pids.append(int(stat.parent.name))
    return pids


def machine_cpu_s() -> float:
    """User + system CPU seconds the machine has spent since boot, over all cores (/proc/stat).

    Measured machine-wide because a sweep's CPU time is mostly in processes Ray starts and reaps itself
    (trial workers under the raylet): the rusage of this script's children saw ~20 s of a sweep that
    trained for minutes."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_sweep(name: str, workdir: Path, num_cpus: int, log_dir: Path) -> dict:
    """``python -m fer_ray.sweep sweeps/<name>.yaml`` in workdir; wall / CPU seconds, rc, load."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "fer_ray.sweep", str(REPO / "sweeps" / f"{name}.yaml"), "--num-cpus", str(num_cpus)]
    cpu_before = machine_cpu_s()
    started = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        rc = subprocess.run(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    lingering = reap_orphans(deadline_s=15.0)
    return {"rc": rc, "wall_s": wall, "cpu_s": machine_cpu_s() - cpu_before, "load1": os.getloadavg()[0], "lingering": lingering}


# --- headline numbers from MLflow ---------------------------------------------------------------


def child_runs(tracking_uri: str, sweep: str) -> pd.DataFrame:
    """The child runs of every sweep whose name is ``sweep`` that ran to the end or were stopped early
    by ASHA (MLflow status KILLED; their metrics up to the stop are real), one row per trial, in the
    order they started."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=f"tags.`fer_ray.sweep` = '{sweep}' and tags.`fer_ray.role` = 'child'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[runs["status"].isin(["FINISHED", "KILLED"])] if len(runs) else runs


def _column(runs: pd.DataFrame, metric: str) -> pd.Series:
    column = f"metrics.{metric}"
    return runs[column].astype(float) if column in runs else pd.Series(dtype=float)


def _param(runs: pd.DataFrame, suffix: str) -> pd.Series:
    matches = [c for c in runs.columns if c.startswith("params.") and c.endswith(suffix)]
    return runs[matches[0]] if matches else pd.Series(dtype=object)


def mean_ci(values: pd.Series) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval over seeds, clipped to [0, 1]."""
    values = values.dropna().to_numpy(float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def _range(values: pd.Series, label: str) -> str:
    values = values.dropna()
    return f"{label} {values.min():.3f}-{values.max():.3f} over {len(values)} runs" if len(values) else f"no {label}"


def headline_finetune(runs: pd.DataFrame) -> str:
    return _range(_column(runs, "test_acc"), "test_acc")


def headline_fraction(runs: pd.DataFrame) -> str:
    fractions = _param(runs, "train_fraction").astype(float)
    accuracy = _column(runs, "test_acc")
    parts = []
    for fraction in sorted(set(fractions), reverse=True):
        mean, low, high = mean_ci(accuracy[fractions == fraction])
        parts.append(f"{fraction:g}: {mean:.3f} [{low:.2f}-{high:.2f}]")
    means = accuracy.groupby(fractions).mean()
    rho = stats.spearmanr(means.index, means.to_numpy()).statistic if len(means) > 2 else math.nan
    return "test_acc " + ", ".join(parts) + f"; Spearman rho(fraction, mean) {rho:.2f}"


def headline_model_size(runs: pd.DataFrame) -> str:
    arch = _param(runs, "model.arch")
    accuracy = _column(runs, "test_acc")
    per_arch = accuracy.groupby(arch).mean()
    order = sorted(per_arch.index, key=lambda a: int("".join(filter(str.isdigit, a))))
    return "test_acc " + ", ".join(f"{a.replace('resnet', 'R')}: {per_arch[a]:.3f}" for a in order)


def _rises(values: np.ndarray) -> str:
    """Where the running best of ``values`` (in start order) goes up: "trial 5 (0.619), trial 20 (0.667)"
    (1-based trial numbers; the first trial sets it), or "no later trial" when the first stays best."""
    best = np.fmax.accumulate(values)
    ups = [i for i in range(1, len(best)) if best[i] > best[i - 1]]
    return ", ".join(f"trial {i + 1} ({best[i]:.3f})" for i in ups) or "no later trial"


def headline_hpo(runs: pd.DataFrame) -> str:
    """Best val_acc, the first trial's, and the best so far in start order, each a trial's last
    reported val_acc (what the search ranked and ASHA compared), as the sweep's report reads them."""
    ordered = runs.sort_values("start_time")  # mlflow.search_runs gives the newest first
    values = _column(ordered, "val_acc").to_numpy(float)
    if not len(values):
        return "no trials"
    return (
        f"best val_acc {np.nanmax(values):.3f} (first trial {values[0]:.3f}; "
        f"{len(values)} trials; the best so far rises at {_rises(values)})"
    )


def headline_metrics(*metrics: str) -> Callable[[pd.DataFrame], str]:
    """Mean over the sweep's trials of each named metric."""

    def headline(runs: pd.DataFrame) -> str:
        return ", ".join(f"{m} {_column(runs, m).mean():.3f}" for m in metrics if f"metrics.{m}" in runs)

    return headline


def headline_noise_sig(runs: pd.DataFrame) -> str:
    values = _column(runs, "acc_var_0.1").dropna()
    return (
        f"acc_var_0.1 median {values.median():.3f} min {values.min():.3f} max {values.max():.3f} "
        f"over {len(values)} repeats; clean {_column(runs, 'test_acc').mean():.3f}"
    )


def headline_tsne(runs: pd.DataFrame) -> str:
    perplexity = _param(runs, "perplexity").astype(float)
    knn = _column(runs, "knn_acc_2d")
    return "knn_acc_2d " + ", ".join(f"perplexity {p:g}: {k:.3f}" for p, k in sorted(zip(perplexity, knn)))


HEADLINES: dict[str, Callable[[pd.DataFrame], str]] = {
    "quickstart": headline_finetune,
    "dataset_fraction": headline_fraction,
    "model_size": headline_model_size,
    "hpo": headline_hpo,
    "evaluate": headline_metrics("test_acc", "test_macro_f1"),
    "noise": headline_metrics("acc_var_0", "acc_var_0.01", "acc_var_0.1", "acc_var_0.3"),
    "noise_sig": headline_noise_sig,
    "epsilon": headline_metrics("acc_eps_0", "acc_eps_0.005", "acc_eps_0.01", "acc_eps_0.1"),
    "svm": lambda runs: (
        f"best cv_acc_mean {_column(runs, 'cv_acc_mean').max():.3f} over {len(runs)} grid points; "
        f"CNN test_acc {_column(runs, 'cnn_test_acc').mean():.3f}"
    ),
    "tsne": headline_tsne,
    "saliency": headline_metrics("selected_acc", "center_area", "center_mass_vanilla", "center_mass_gradcam"),
    "bias": headline_metrics("test_acc", "acc/gender/F", "acc/gender/M", "acc_gap/gender"),
    "probe": lambda runs: f"{len(runs)} trials finished",
}


def headline(name: str, tracking_uri: str) -> str:
    """The sweep's headline (plus the test accuracy of a training stage it ran, if any)."""
    try:
        runs = child_runs(tracking_uri, name)
        text = HEADLINES[name](runs)
        trained = child_runs(tracking_uri, f"{name}-train")
        if len(trained):
            text += f"  | trained its models first: {headline_finetune(trained)}"
        return text
    except Exception as error:  # a report line must not end the benchmark; say what failed
        return f"(headline unavailable: {type(error).__name__}: {error})"


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SWEEPS, default=list(SWEEPS), help="these sweeps, in this order")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="an empty folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder (mlflow.db, reports/, logs/)")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fer_ray_demos_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        parser.error(f"--workdir {workdir} is not empty: the timings must include training the shared recipe")
    log_dir = workdir / "logs"
    log_dir.mkdir()
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    subreaper = become_subreaper()
    print(
        f"folder {workdir}; {os.cpu_count()} CPUs here, Ray given {args.num_cpus}; load average at start "
        f"{os.getloadavg()[0]:.2f}; cpu s: the whole machine's CPU time during the sweep (/proc/stat)"
        + ("" if subreaper else "; not a subreaper here: Ray's detached processes are not waited for")
    )
    print(f"{'sweep':<17} {'rc':>2} {'wall s':>7} {'/180s':>6} {'cpu s':>7} {'load1':>6}  headline")
    total_wall = total_cpu = 0.0
    failures = 0
    try:
        for name in args.only:
            result = run_sweep(name, workdir, args.num_cpus, log_dir)
            total_wall += result["wall_s"]
            total_cpu += result["cpu_s"]
            failures += result["rc"] != 0
            note = f" ({result['lingering']} processes still running)" if result["lingering"] else ""
            print(
                f"{name:<17} {result['rc']:>2} {result['wall_s']:7.1f} {result['wall_s'] / GOAL_PER_SWEEP_S:6.2f} "
                f"{result['cpu_s']:7.1f} {result['load1']:6.2f}  {headline(name, tracking_uri)}{note}",
                flush=True,
            )
        print(
            f"{'all':<17} {failures:>2} {total_wall:7.1f} {total_wall / GOAL_TOTAL_S:6.2f} {total_cpu:7.1f} "
            f"{os.getloadavg()[0]:6.2f}  goal: each <= {GOAL_PER_SWEEP_S:.0f} s, all <= {GOAL_TOTAL_S:.0f} s "
            f"(ratio column: wall / goal); failed sweeps: {failures}"
        )
    finally:
        if args.keep or args.workdir:
            print(f"kept {workdir} (logs/ has each sweep's console output)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
