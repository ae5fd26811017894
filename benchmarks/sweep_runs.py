"""Wall time, node and GPU of every trial run of the sweeps in an MLflow store, and how many ran at once.

    python benchmarks/sweep_runs.py sqlite:///mlflow.db [--expect-concurrent 2]

Prints one line per child run (sweep, run name, status, wall seconds, fer_ray.node_id, fer_ray.gpu_ids)
and, per sweep, the largest number of its runs whose [start, end] intervals overlap, and the largest
number that overlapped on one GPU id. --expect-concurrent N exits 1 when no sweep reached N on one GPU
(the fractional-GPU check of benchmarks/gpu.sh).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import mlflow


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The most intervals (start, end) open at one instant (an end at t closes before a start at t)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1]))
    open_now = best = 0
    for _, change in events:
        open_now += change
        best = max(best, open_now)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tracking_uri")
    parser.add_argument("--expect-concurrent", type=int, default=0)
    args = parser.parse_args()
    client = mlflow.MlflowClient(tracking_uri=args.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`fer_ray.role` = 'child'", max_results=5000, order_by=["attributes.start_time ASC"])
    by_sweep: dict[str, list] = defaultdict(list)
    print(f"{'sweep':<22} {'run':<34} {'status':<9} {'wall s':>8}  node      gpu")
    for run in runs:
        tags, info = run.data.tags, run.info
        wall = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
        by_sweep[tags.get("fer_ray.sweep", "?")].append(run)
        print(
            f"{tags.get('fer_ray.sweep', '?')[:22]:<22} {(info.run_name or '')[:34]:<34} {info.status:<9} "
            f"{wall:>8.1f}  {tags.get('fer_ray.node_id', '?')[:8]:<9} {tags.get('fer_ray.gpu_ids', '?')}"
        )
    best_on_one_gpu = 0
    for sweep, sweep_runs in by_sweep.items():
        finished = [r for r in sweep_runs if r.info.end_time]
        spans = [(r.info.start_time, r.info.end_time) for r in finished]
        per_gpu: dict[str, list] = defaultdict(list)
        for run, span in zip(finished, spans):
            for gpu in filter(None, run.data.tags.get("fer_ray.gpu_ids", "").split(",")):
                per_gpu[(run.data.tags.get("fer_ray.node_id"), gpu)].append(span)
        on_one_gpu = max((max_overlap(s) for s in per_gpu.values()), default=0)
        best_on_one_gpu = max(best_on_one_gpu, on_one_gpu)
        print(f"sweep {sweep}: {len(sweep_runs)} runs, at most {max_overlap(spans)} at once, at most {on_one_gpu} at once on one GPU")
    if args.expect_concurrent and best_on_one_gpu < args.expect_concurrent:
        print(f"FAILED: expected >= {args.expect_concurrent} trials at once on one GPU, saw {best_on_one_gpu}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
