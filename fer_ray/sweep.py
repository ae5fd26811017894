"""``python -m fer_ray.sweep SPEC.yaml``: run one experiment's sweep on Ray, tracked in MLflow.

    python -m fer_ray.sweep sweeps/quickstart.yaml
    python -m fer_ray.sweep sweeps/dataset_fraction.yaml --set train.epochs=3 search.seeds=[0,1]
    python -m fer_ray.sweep sweeps/model_size.yaml --profile none --set data.dataset=kdef data.root=/data/KDEF
    python -m fer_ray.sweep sweeps/hpo.yaml --dry-run
    python -m fer_ray.sweep sweeps/quickstart.yaml --resume        # finish an interrupted sweep

Exit status: 0 every trial succeeded (and ``--help``, ``--dry-run``); 1 a trial or the tracking server
failed; 2 a usage or spec error (nothing started); 130 interrupted (Ctrl-C; ``--resume`` finishes it).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from pathlib import Path

from fer_ray.orchestrate.spec import SpecError, load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130 = 128 + SIGINT, as shells report it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_ray.sweep",
        description="Run the trials of one sweep file on Ray Tune; every trial is an MLflow child run.",
        epilog="Compare runs: mlflow ui --backend-store-uri sqlite:///mlflow.db\n"
        "Exit status: 0 done, 1 a trial or the tracking server failed, 2 usage or spec error (nothing ran),\n"
        "130 interrupted (finish it with --resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", type=Path, help="sweep file (YAML), e.g. sweeps/quickstart.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override any key by its dotted path, e.g. train.lr=3e-4 data.root=/data/KDEF",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="apply the sweep file's named override set (e.g. 'embedded'); 'none' = the file as written",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the trial plan and run nothing")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest interrupted run of this sweep, with the spec it started with (a --set or sweep "
        "file that now says otherwise is refused) and Tune state only from inside the configured storage",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray Tune's status tables and the INFO logs of Ray and MLflow",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the spec's tracking.uri)")
    parser.add_argument("--storage", default=None, help="Tune storage path or URI (default: the spec's storage.path)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    if args.storage:
        overrides.append(f"storage.path={args.storage}")
    try:
        spec = load_spec(args.spec, overrides, profile=args.profile)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE

    if args.dry_run:  # imports no Ray, MLflow or torch: it answers in about a second
        from fer_ray.orchestrate.dry_run import dry_run

        try:
            print(dry_run(spec, num_cpus=args.num_cpus))
        except SpecError as err:  # the pre-flight found bad input
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK

    # Imported here so --help, spec errors and --dry-run answer without starting Ray.
    from fer_ray.orchestrate.driver import SweepFailed, run_sweep
    from fer_ray.orchestrate.tracking import TrackingError

    try:
        outcome = run_sweep(spec, address=args.address, resume=args.resume, num_cpus=args.num_cpus, verbose=args.verbose)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (SweepFailed, TrackingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.summary())
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.all_succeeded else EXIT_FAILED


def cli() -> None:
    """``python -m fer_ray.sweep`` and ``fer-ray-sweep``: main(), then an exit that skips Python's
    teardown of the torch / Ray / MLflow modules (~2 s on 2 cores, with nothing left to write).

    The quick exit is registered before main() imports Ray and MLflow, so it runs after their exit
    handlers (Ray's shutdown of the local cluster among them); it flushes logging and the standard
    streams itself. An exception still prints its traceback first and exits with status 1.
    argparse's own exits (``--help`` 0, usage errors 2) and Ctrl-C outside Tune (130) keep their status.
    """
    exit_code = [EXIT_FAILED]
    atexit.register(_exit_now, exit_code)
    try:
        exit_code[0] = main()
    except SystemExit as exit_request:  # argparse: parser.exit(status) after --help or a usage error
        exit_code[0] = _status_of(exit_request)
    except KeyboardInterrupt:
        print("interrupted: finish it with  python -m fer_ray.sweep <this sweep file> --resume", file=sys.stderr)
        exit_code[0] = EXIT_INTERRUPTED
    sys.exit(exit_code[0])


def _status_of(exit_request: SystemExit) -> int:
    """The status ``sys.exit(code)`` would give: None is 0, an int itself, anything else (a message) 1."""
    if exit_request.code is None:
        return EXIT_OK
    if isinstance(exit_request.code, int):
        return exit_request.code
    print(exit_request.code, file=sys.stderr)
    return EXIT_FAILED


def _exit_now(exit_code: list[int]) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code[0])


if __name__ == "__main__":
    cli()
