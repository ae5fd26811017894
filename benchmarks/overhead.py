"""Per-trial overhead of fer_ray (Ray Tune + MLflow logging) against a plain Python loop.

The trial is the probe experiment (3 instant "epochs", a checkpoint each, a few metrics and tags):
- baseline: the same 20 trials called one after another in this process (LocalReporter: no Ray, no
  MLflow);
- fer_ray: a 1-trial sweep on a fresh local Ray and a fresh sqlite MLflow (start-up = its wall time
  minus one baseline trial: ray.init, the MLflow database, Tune's set-up, the first trial process);
  then, on that warm Ray, a 2-trial sweep and a (2 + 20)-trial sweep through ``run_sweep``.
Per-trial overhead = (T22 - T2) / 20 minus one baseline trial: the fixed cost of any sweep (Tuner,
parent run, report) cancels out.

    python benchmarks/overhead.py [--trials 20] [--cpus 2]

Goals: <= 0.5 s per trial after start-up; start-up <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "probe.yaml"


def baseline_seconds(n_trials: int, folder: Path) -> float:
    """The trials as a plain loop: the probe experiment with an in-memory reporter."""
    from fer_ray.experiments import probe
    from fer_ray.experiments.base import LocalReporter, Trial
    from fer_ray.orchestrate.spec import load_spec

    spec = load_spec(SWEEP)
    started = time.perf_counter()
    for i in range(n_trials):
        trial = Trial(sweep="probe", data=spec.data, model=spec.model, train=spec.train,
                      eval=spec.eval_config().model_copy(update={"value": float(i)}))
        probe.run(trial, LocalReporter(folder / f"trial{i}"))
    return time.perf_counter() - started


def sweep_seconds(n_trials: int, folder: Path, cpus: int) -> float:
    """Wall time of one probe sweep with ``n_trials`` trials through fer_ray's driver."""
    from fer_ray.orchestrate.driver import run_sweep
    from fer_ray.orchestrate.spec import load_spec

    values = "[" + ",".join(str(i) for i in range(n_trials)) + "]"
    spec = load_spec(SWEEP, [
        f"search.grid.eval.value={values}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"storage.path={folder / 'ray_results'}",
        f"name=probe{n_trials}",
    ])
    started = time.perf_counter()
    outcome = run_sweep(spec, num_cpus=cpus)
    elapsed = time.perf_counter() - started
    assert outcome.all_succeeded and len(outcome.rows) == n_trials, outcome.summary()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # reports/ of the sweeps land in the temp folder
        plain = baseline_seconds(args.trials, folder / "plain")
        one = sweep_seconds(1, folder, args.cpus)
        two = sweep_seconds(2, folder, args.cpus)
        many = sweep_seconds(2 + args.trials, folder, args.cpus)
    plain_per_trial = plain / args.trials
    startup = one - plain_per_trial
    overhead = (many - two) / args.trials - plain_per_trial
    print(f"plain loop: {args.trials} trials in {plain:.2f} s ({plain_per_trial * 1000:.1f} ms per trial)")
    print(f"fer_ray:    first sweep (1 trial) {one:.2f} s; then 2 trials {two:.2f} s, {2 + args.trials} trials {many:.2f} s on {args.cpus} CPUs")
    print(f"start-up: {startup:.2f} s (goal <= 10 s)")
    print(f"per-trial overhead after start-up: {overhead:.3f} s (goal <= 0.5 s)")
    print(f"ratio overhead/goal: {overhead / 0.5:.2f}x of the 0.5 s budget per trial")


if __name__ == "__main__":
    main()
