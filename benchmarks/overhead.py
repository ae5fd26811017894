"""Per-trial overhead and start-up of fer_ray (Ray Tune + MLflow logging) against a plain Python loop.

The trial is the probe experiment (3 instant "epochs", a checkpoint each, a few metrics and tags).
Measured in one run, on this machine:

- plain loop: the same trials called one after another in this process (LocalReporter: no Ray, no
  MLflow), imports done beforehand;
- Ray + Tune alone (the floor fer_ray cannot go below): in a fresh process with Ray imported,
  ``ray.init`` of a local Ray and a 1-trial ``Tuner.fit`` of a function that only calls
  ``tune.report``; no fer_ray, no MLflow, no torch;
- fer_ray start-up: a 1-trial sweep through ``run_sweep`` on a fresh local Ray and a fresh sqlite
  MLflow, minus one plain trial (Ray, the MLflow database, Tune's set-up, the trial process importing
  torch and MLflow, the parent run, the report);
- per-trial overhead: on that warm Ray, a 2-trial and a (2 + N)-trial sweep; (T(2+N) - T2) / N minus
  one plain trial, so the fixed cost of any sweep (Tuner, parent run, report) cancels out;
- as a user sees it: ``python -m fer_ray.sweep`` with 1 trial against a script that runs the one plain
  trial, both fresh processes, imports included.

    python benchmarks/overhead.py [--trials 20] [--cpus 2] [--repeats 3]

Fresh-Ray numbers vary by +-15 % on a shared 2-core machine: each is taken --repeats times and
printed as median [min-max].

Goals: <= 0.5 s per trial after start-up; start-up <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SWEEP = REPO / "sweeps" / "probe.yaml"

# A fresh process: a local Ray and one Tune trial that does nothing but report (prints its seconds).
RAY_TUNE_FLOOR = textwrap.dedent("""
    import sys, tempfile, time
    import ray
    from ray import tune
    started = time.perf_counter()
    ray.init(address="local", num_cpus=int(sys.argv[1]), include_dashboard=False)
    def trial(config):
        tune.report({"value": config["value"]})
    tuner = tune.Tuner(trial, param_space={"value": tune.grid_search([0])},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0))
    assert not tuner.fit().errors
    print(time.perf_counter() - started)
""")

# A fresh process: the plain loop's way to run one probe trial, imports included.
PLAIN_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fer_ray.experiments import probe
    from fer_ray.experiments.base import LocalReporter, Trial
    from fer_ray.orchestrate.spec import load_spec
    spec = load_spec(sys.argv[1])
    trial = Trial(sweep="probe", data=spec.data, model=spec.model, train=spec.train, settings=spec.experiment_settings())
    probe.run(trial, LocalReporter(Path(sys.argv[2])))
""")


def probe_overrides(n_trials: int, folder: Path, name: str) -> list[str]:
    """``--set`` values for an n-trial probe sweep whose MLflow database and Tune state live in ``folder``."""
    values = "[" + ",".join(str(i) for i in range(n_trials)) + "]"
    return [
        f"search.grid.settings.value={values}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"storage.path={folder / 'ray_results'}",
        f"name={name}",
    ]


def baseline_seconds(n_trials: int, folder: Path) -> float:
    """The trials as a plain loop: the probe experiment with an in-memory reporter."""
    from fer_ray.experiments import probe
    from fer_ray.experiments.base import LocalReporter, Trial
    from fer_ray.orchestrate.spec import load_spec

    spec = load_spec(SWEEP)
    started = time.perf_counter()
    for i in range(n_trials):
        trial = Trial(
            sweep="probe",
            data=spec.data,
            model=spec.model,
            train=spec.train,
            settings=spec.experiment_settings().model_copy(update={"value": float(i)}),
        )
        probe.run(trial, LocalReporter(folder / f"trial{i}"))
    return time.perf_counter() - started


def sweep_seconds(n_trials: int, folder: Path, cpus: int) -> float:
    """Wall time of one probe sweep with ``n_trials`` trials through fer_ray's driver."""
    from fer_ray.orchestrate.driver import run_sweep
    from fer_ray.orchestrate.spec import load_spec

    spec = load_spec(SWEEP, probe_overrides(n_trials, folder, f"probe{n_trials}"))
    started = time.perf_counter()
    outcome = run_sweep(spec, num_cpus=cpus)
    elapsed = time.perf_counter() - started
    assert outcome.all_succeeded and len(outcome.rows) == n_trials, outcome.summary()
    return elapsed


def process_seconds(command: list[str], folder: Path) -> tuple[float, str]:
    """Wall time and stdout of ``command`` run in ``folder`` as a fresh process (fails loudly)."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-Ray measurements (start-up, floor, CLI) to take the median of")
    args = parser.parse_args()
    import ray

    floors, startups, clis, plain_processes = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)  # reports/ of the in-process sweeps land in the temp folder
        plain = baseline_seconds(args.trials, folder / "plain")
        plain_per_trial = plain / args.trials
        # one after another in each round, so a busy spell of the machine touches all of them alike
        for round_ in range(args.repeats):
            here = folder / f"round{round_}"
            here.mkdir()
            _, floor_out = process_seconds([sys.executable, "-c", RAY_TUNE_FLOOR, str(args.cpus)], here)
            floors.append(float(floor_out.split()[-1]))
            startups.append(sweep_seconds(1, here, args.cpus) - plain_per_trial)
            ray.shutdown()
            cli, _ = process_seconds(
                [
                    sys.executable,
                    "-m",
                    "fer_ray.sweep",
                    str(SWEEP),
                    "--num-cpus",
                    str(args.cpus),
                    "--set",
                    *probe_overrides(1, here, "probe_cli"),
                ],
                here,
            )
            plain_process, _ = process_seconds([sys.executable, "-c", PLAIN_SCRIPT, str(SWEEP), "trial"], here)
            clis.append(cli)
            plain_processes.append(plain_process)
        warm = folder / "warm"
        warm.mkdir()
        sweep_seconds(1, warm, args.cpus)  # start Ray; the two sweeps below find it running
        two = sweep_seconds(2, warm, args.cpus)
        many = sweep_seconds(2 + args.trials, warm, args.cpus)
    overhead = (many - two) / args.trials - plain_per_trial
    startup, floor = statistics.median(startups), statistics.median(floors)
    user_startup = [cli - plain for cli, plain in zip(clis, plain_processes)]
    print(f"plain loop: {args.trials} trials in {plain:.2f} s ({plain_per_trial * 1000:.1f} ms per trial)")
    print(f"Ray + Tune alone (ray.init + a 1-trial fit of an empty function): {_spread(floors)} on {args.cpus} CPUs")
    print(f"start-up (1-trial sweep on a fresh Ray, minus one plain trial): {_spread(startups)} (goal <= 10 s)")
    print(f"  of which over Ray + Tune alone: {startup - floor:.2f} s (medians; {startup / floor:.2f}x the floor)")
    print(f"fixed cost of a sweep on a running Ray (2 trials): {two:.2f} s")
    print(f"per-trial overhead after start-up: {overhead:.3f} s (goal <= 0.5 s); ratio overhead/goal {overhead / 0.5:.2f}x")
    print(
        f"as a user sees it: `python -m fer_ray.sweep` (1 trial) {_spread(clis)} vs the plain script (1 trial) "
        f"{_spread(plain_processes)}: {_spread(user_startup)} of start-up"
    )


def _spread(values: list[float]) -> str:
    """'median s [min-max]' of repeated measurements."""
    return f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}, n={len(values)}]"


if __name__ == "__main__":
    main()
