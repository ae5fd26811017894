"""Wall time of ``python -m fer_ray.sweep <sweep> --dry-run`` for a few shipped sweeps, against two
baselines measured in the same run, each in a fresh process:

- ``python -c pass``: the interpreter's own start;
- ``import fer_ray.orchestrate.spec``: the sweep file schema (pydantic, yaml), which every dry run needs.

The dry runs use a warm cache (the generated faces and their tensor cache exist after a first call,
which is made untimed; a cold first dry run also generates and decodes the faces). Each command runs
--repeats times; printed as median [min-max] seconds and the ratio of the medians to ``python -c pass``.

    python benchmarks/dry_run.py [--repeats 3] [--sweeps quickstart noise_sig hpo svm]

Goal (issue 14): every dry run < 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 3.0


def wall_seconds(command: list[str], cwd: Path, repeats: int) -> list[float]:
    """Wall seconds of ``command`` run ``repeats`` times (each must exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - started)
    return times


def line(label: str, times: list[float], baseline: float) -> str:
    median = statistics.median(times)
    return f"{label:<44} {median:6.2f} s [{min(times):.2f}-{max(times):.2f}]  x{median / baseline:5.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweeps", nargs="+", default=["quickstart", "noise_sig", "hpo", "svm"])
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="fer_ray_dry_run_") as folder:
        cwd = Path(folder)  # no mlflow.db here: the dry runs read none
        bare = wall_seconds([python, "-c", "pass"], cwd, args.repeats)
        baseline = statistics.median(bare)
        print(line("python -c pass (baseline)", bare, baseline))
        print(
            line(
                "import fer_ray.orchestrate.spec",
                wall_seconds([python, "-c", "import fer_ray.orchestrate.spec"], cwd, args.repeats),
                baseline,
            )
        )
        worst = 0.0
        for name in args.sweeps:
            command = [python, "-m", "fer_ray.sweep", str(REPO / "sweeps" / f"{name}.yaml"), "--dry-run"]
            wall_seconds(command, cwd, 1)  # warm: faces generated, tensor cache built
            times = wall_seconds(command, cwd, args.repeats)
            worst = max(worst, statistics.median(times))
            print(line(f"--dry-run {name}", times, baseline))
        print(f"slowest dry run {worst:.2f} s (goal < {GOAL_S:g} s): {'met' if worst < GOAL_S else 'NOT met'}")


if __name__ == "__main__":
    main()
