"""Disk left by one quickstart sweep (``make quickstart``), per output folder, against the 400 MB budget.

    .venv/bin/python benchmarks/disk.py                      # the quickstart as shipped (4 trials x 8 epochs)
    .venv/bin/python benchmarks/disk.py --set train.epochs=2 # quicker; the bytes do not depend on epochs

Runs ``python -m fer_ray.sweep sweeps/quickstart.yaml`` in a fresh temp folder (its tensor cache in
.cache there, via FER_RAY_CACHE) and prints the bytes of ray_results/, mlartifacts/, mlflow.db,
reports/ and .cache, the total, and total / budget. Also printed: the bytes of the files holding
network weights (*.pt), to show where the space goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("ray_results", "mlartifacts", "mlflow.db", "reports", ".cache")
BUDGET_BYTES = 400 * 1000**2  # issue 13: quickstart leaves <= 400 MB in all


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself; 0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fer_ray_disk_") as folder:
        work = Path(folder)
        command = [sys.executable, "-m", "fer_ray.sweep", str(REPO / "sweeps" / "quickstart.yaml")]
        command += ["--set", *args.overrides] if args.overrides else []
        command += ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []
        environment = {
            **os.environ,
            "FER_RAY_CACHE": str(work / ".cache"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        started = time.perf_counter()
        done = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            return done.returncode
        sizes = {name: folder_bytes(work / name) for name in OUTPUTS}
        weights = {name: sum(p.stat().st_size for p in (work / name).rglob("*.pt")) if (work / name).is_dir() else 0 for name in OUTPUTS}
        total = sum(sizes.values())
        print(f"quickstart {' '.join(args.overrides) or '(as shipped)'}: sweep took {time.perf_counter() - started:.0f} s")
        for name in OUTPUTS:
            print(f"  {name:<12} {sizes[name] / 1e6:9.1f} MB   (*.pt files: {weights[name] / 1e6:.1f} MB)")
        print(
            f"  {'total':<12} {total / 1e6:9.1f} MB   budget {BUDGET_BYTES / 1e6:.0f} MB: ratio {total / BUDGET_BYTES:.2f}"
            f" ({'within' if total <= BUDGET_BYTES else 'OVER'} budget)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
