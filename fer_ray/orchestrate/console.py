"""What a person watching a sweep sees: one line per trial in the sweep's own words.

Each trial is shown under its MLflow run name (fer_ray.orchestrate.trial.run_name: the values that
vary first), with its status, ``epoch n/N`` and the experiment's summary metrics
(``Experiment.summary_metrics``), under an overall bar with the elapsed time and an ETA.

- On a terminal: a live view (rich) redrawn in place, gone when the sweep ends (the end summary
  follows it).
- Elsewhere (CI, a log file): plain lines, one when a trial starts, one when it ends, and between
  them a line for a finished epoch when the trial passes a quarter of its epochs or has been quiet
  for ``heartbeat_s`` (never two of one trial within ``min_interval_s``): a few lines per trial however
  fast or slow its epochs are.
- ``--verbose``: plain lines, plus Ray Tune's own status tables and the INFO logs of Ray and MLflow.

Ray Tune pickles its callbacks and reporter with the experiment's state (``Tuner.restore`` brings them
back), so both keep only the sweep's spec and decide how to show things when a run starts:
``--verbose`` reaches them through the environment (:func:`set_verbose`).

fer_ray imports rich here only, inside the live view's functions (tests/test_import_weight.py); trial
processes never import this module.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from fer_ray.experiments import get_experiment
from fer_ray.experiments.contract import Experiment, metric_pattern
from fer_ray.orchestrate.spec import SweepSpec, trial_of, trial_spec
from fer_ray.orchestrate.trial import QUIET_MLFLOW, TRIAL_FINISHED, VERBOSE_ENV, is_verbose, run_name

#: loggers whose INFO (or WARNING) lines are chatter unless --verbose: logger name -> level kept
QUIET_LOGGERS = {
    "mlflow": logging.WARNING,  # "Creating initial MLflow database tables...", "Updating database tables"
    "ray.tune": logging.WARNING,  # "Total run time: ...", result-file notes
    "ray.train": logging.WARNING,  # per-checkpoint notes
    # Tune timing its own steps: "The `process_trial_save` operation took 0.66 s, which may be a
    # performance bottleneck" (a ResNet-152 checkpoint on 2 cores), not something a user can act on
    "ray.tune.utils.util": logging.ERROR,
    # "Token authentication is enabled for this Ray cluster": the sweep turned it on (orchestrate.cluster)
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}

#: what a trial is doing, as the console says it
PENDING, RUNNING, DONE, STOPPED, ERROR, RETRYING = "pending", "running", "done", "stopped", "error", "retrying"


def set_verbose(verbose: bool) -> None:
    """Choose the console for sweeps started (or restored) by this process from now on."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


def quiet_console() -> None:
    """Turn MLflow's progress bars off (trial.QUIET_MLFLOW; a value the user exported wins) and set
    QUIET_LOGGERS' levels (INFO with --verbose). Call before Ray starts: its processes inherit the
    environment."""
    for name, value in QUIET_MLFLOW.items():
        os.environ.setdefault(name, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.INFO if is_verbose() else level)


def ray_logging_level() -> int:
    """``ray.init(logging_level=...)``: Ray's INFO lines ("Started a local Ray instance") only with --verbose."""
    return logging.INFO if is_verbose() else logging.WARNING


# ------------------------------------------------------------------------------------ state


@dataclass
class TrialLine:
    """One trial as the console shows it. epoch: the last epoch reported; epochs: how many it will
    report at most (None: the experiment reports once, at the end); metrics: its latest numbers."""

    name: str
    status: str = PENDING
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: plain view: when the trial's last line was written (time.monotonic) and the quarter of its
    #: epochs that line reached
    last_printed: float = -float("inf")
    quarter_printed: int = 0

    def progress(self) -> float:
        """The share of this trial that is done, in [0, 1]."""
        if self.status in (DONE, STOPPED, ERROR):
            return 1.0
        if self.epoch and self.epochs:
            return min(self.epoch / self.epochs, 1.0)
        return 0.0

    def epoch_text(self) -> str:
        if self.epoch is None:
            return ""
        return f"epoch {self.epoch}/{self.epochs}" if self.epochs else f"epoch {self.epoch}"


@dataclass
class SweepProgress:
    """Every trial's line (in the order Tune made them) and the sweep's clock. total: trials the sweep
    will run (Tune's count of samples; lines may be fewer while Tune has not made them all yet)."""

    total: int
    started: float
    lines: dict[str, TrialLine] = field(default_factory=dict)

    def finished(self) -> int:
        return sum(line.status in (DONE, STOPPED, ERROR) for line in self.lines.values())

    def fraction(self) -> float:
        """The share of the sweep done, counting the finished epochs of running trials, in [0, 1]."""
        return sum(line.progress() for line in self.lines.values()) / max(self.total, 1)

    def elapsed(self, now: float) -> float:
        return now - self.started

    def eta(self, now: float) -> float | None:
        """Seconds left at the pace so far (None before anything finished)."""
        done = self.fraction()
        if done <= 0:
            return None
        return self.elapsed(now) * (1 - done) / done


def clock(seconds: float | None) -> str:
    """``1:05`` / ``1:02:05``; ``?`` for None."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def metric_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def footer_text(progress: SweepProgress, now: float) -> str:
    """``2/4 trials done  elapsed 1:02  ETA 1:30``."""
    return f"{progress.finished()}/{progress.total} trials done  elapsed {clock(progress.elapsed(now))}  ETA {clock(progress.eta(now))}"


# ------------------------------------------------------------------------------------ views


def live_view(progress: SweepProgress, experiment: Experiment, now: float, title: str):
    """The rich renderable of the live view: a table of trials (name, status, epoch, summary metrics)
    above a bar of the whole sweep with its elapsed time and ETA."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    lines = list(progress.lines.values())
    columns = experiment.summary_columns({name for line in lines for name in line.metrics})
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    table.add_column("trial", no_wrap=True)
    table.add_column("status")
    table.add_column("epoch")
    for name in columns:
        table.add_column(name, justify="right")
    for line in lines:
        style = {RUNNING: "cyan", DONE: "green", ERROR: "red", STOPPED: "yellow", RETRYING: "magenta"}.get(line.status, "dim")
        table.add_row(line.name, f"[{style}]{line.status}[/]", line.epoch_text(), *(metric_text(line.metrics.get(m)) for m in columns))
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=1.0, completed=progress.fraction(), width=40), footer_text(progress, now))
    return Group(table, bar)


class LiveView:
    """The view on a terminal: rich.live.Live, redrawn at most twice a second."""

    def __init__(self, title: str):
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.live = Live(console=Console(), auto_refresh=False, transient=True, redirect_stdout=True, redirect_stderr=True)
        self.live.start()
        self.drawn = 0.0

    def event(self, text: str) -> None:
        """Plain mode's line for an event: the live table already shows it."""

    def refresh(self, progress: SweepProgress, experiment: Experiment, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.drawn >= 0.5:
            self.live.update(live_view(progress, experiment, time.time(), self.title), refresh=True)
            self.drawn = now

    def close(self) -> None:
        self.live.stop()


class PlainView:
    """The view elsewhere: one line per event, ``[elapsed] trial name: what happened``."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def event(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def refresh(self, progress: SweepProgress, experiment: Experiment, force: bool = False) -> None:
        """Nothing to redraw: plain lines are written as events happen."""

    def close(self) -> None:
        self.stream.flush()


# ------------------------------------------------------------------------------------ end summary


def summary_table(rows: list[dict[str, Any]], experiment: Experiment) -> list[str]:
    """The end-of-sweep table: per trial (rows of ``{"name", "status", "metrics"}``) its name, status
    and the experiment's summary metrics. The metrics one pattern selects share a header naming the
    pattern (``acc_eps_*``) over columns named by what ``*`` stood for (``0.01``)."""
    numeric = {name for row in rows for name, value in row["metrics"].items() if _is_number(value)}
    spans = []  # (shared header or "", [(metric, column header, width)])
    for pattern, names in experiment.summary_groups(numeric):
        shared = "*" in pattern and len(names) > 1
        matcher = metric_pattern(pattern)
        headers = ["/".join(matcher.fullmatch(name).groups()) if shared else name for name in names]
        widths = [max(len(header), 6) for header in headers]
        if shared:  # the shared header fits above its columns: the last one takes what is missing
            widths[-1] += max(len(pattern) - (sum(widths) + len(widths) - 1), 0)
        spans.append((pattern if shared else "", list(zip(names, headers, widths))))
    columns = [column for _, span in spans for column in span]
    name_width = max([len("trial"), *(len(row["name"]) for row in rows)])
    lead = " " * (name_width + 1 + 8)
    lines = []
    if any(shared for shared, _ in spans):
        lines.append(" ".join([lead, *(f"{shared:<{sum(w for *_, w in span) + len(span) - 1}}" for shared, span in spans)]).rstrip())
    header = " ".join([f"{'trial':<{name_width}}", f"{'status':<8}", *(f"{h:>{w}}" for _, h, w in columns)]).rstrip()
    lines += [header, "-" * len(header)]
    for row in rows:
        values = [f"{_fixed(row['metrics'].get(metric)):>{w}}" for metric, _, w in columns]
        lines.append(" ".join([f"{row['name']:<{name_width}}", f"{row['status']:<8}", *values]).rstrip())
    return lines


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fixed(value: Any) -> str:
    return f"{value:.4f}" if _is_number(value) else "-"


def report_answer(markdown: str) -> str:
    """What the console shows of a sweep's report: the whole markdown with --verbose, else its one-line
    answers (its bold lines, e.g. ``best: lr=0.001, test_acc 0.51 [0.42-0.60] over 3 seeds``); the
    end summary says where the report is."""
    if is_verbose():
        return markdown
    answers = [line.strip().strip("*") for line in markdown.splitlines() if line.startswith("**") and line.rstrip().endswith("**")]
    return "\n".join(answers)


# ------------------------------------------------------------------------------------ callback


class SweepConsole(tune.Callback):
    """The Tune callback behind the console (see the module doc). ``stream``/``live`` choose the view
    (defaults: stdout; live when it is a terminal and the sweep is not verbose); min_interval_s and
    heartbeat_s pace the plain view's epoch lines (seconds)."""

    def __init__(
        self,
        spec: SweepSpec,
        stream: TextIO | None = None,
        live: bool | None = None,
        min_interval_s: float = 5.0,
        heartbeat_s: float = 300.0,
    ):
        self.spec = spec
        self.stream = stream
        self.live = live
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self._reset()

    def _reset(self) -> None:
        self.progress: SweepProgress | None = None
        self.view: LiveView | PlainView | None = None

    def __getstate__(self) -> dict:
        """What Tune pickles with the experiment's state: the settings, not the screen."""
        state = {key: value for key, value in self.__dict__.items() if key not in ("progress", "view")}
        if state["stream"] in (sys.stdout, sys.stderr):
            state["stream"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def experiment(self) -> Experiment:
        return get_experiment(self.spec.experiment)

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self.progress = SweepProgress(total=int(total_num_samples or 0), started=time.time())
        stream = self.stream or sys.stdout
        live = self.live if self.live is not None else (stream.isatty() and not is_verbose())
        title = f"Sweep {self.spec.name} ({self.spec.experiment})"
        self.view = LiveView(title) if live else PlainView(stream)

    # -- Tune's events

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        for trial in trials:
            self._line(trial)
        self.view.refresh(self.progress, self.experiment)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        line = self._line(trial)
        line.status = RUNNING
        self._say(line, "started")

    def on_trial_restore(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trial).status = RUNNING

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        line = self._line(trial)
        line.status = RUNNING
        line.metrics.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if "epoch" in result and not result.get(TRIAL_FINISHED):
            line.epoch = int(result["epoch"])
            if self._epoch_line_due(line):
                self._say(line, f"{line.epoch_text()}  {self._metrics_text(line)}".rstrip())
        self.view.refresh(self.progress, self.experiment)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        line = self._line(trial)
        line.status = RETRYING
        self._say(line, f"failed, retrying ({_error_text(trial)})")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        line = self._line(trial)
        finished = bool((trial.last_result or {}).get(TRIAL_FINISHED))
        line.status = DONE if finished else STOPPED
        self._say(line, f"{line.status}  {self._metrics_text(line)}".rstrip() + f"   [{self._footer()}]")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        line = self._line(trial)
        line.status = ERROR
        self._say(line, f"error: {_error_text(trial)}   [{self._footer()}]")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.view is not None:
            self.view.close()

    # -- helpers

    def _line(self, trial) -> TrialLine:
        """The trial's line, made on first sight (its name and epoch count from the sweep's spec)."""
        line = self.progress.lines.get(trial.trial_id)
        if line is None:
            config = dict(trial.config or {})
            line = TrialLine(name=run_name(config, self.spec), epochs=self._epochs(config))
            self.progress.lines[trial.trial_id] = line
            self.progress.total = max(self.progress.total, len(self.progress.lines))
        return line

    def _epochs(self, config: dict[str, Any]) -> int | None:
        count = self.experiment.epochs
        return None if count is None else int(count(trial_of(trial_spec(self.spec, config))))

    def _epoch_line_due(self, line: TrialLine) -> bool:
        """Plain view: whether the trial's latest epoch gets a line (see the module doc). The last
        epoch gets none: the trial's end line follows with its numbers."""
        quiet = time.monotonic() - line.last_printed
        if quiet < self.min_interval_s or line.epoch == line.epochs:
            return False
        quarter = line.epoch * 4 // line.epochs if line.epochs else 0
        if quarter > line.quarter_printed or quiet >= self.heartbeat_s:
            line.quarter_printed = max(quarter, line.quarter_printed)
            return True
        return False

    def _metrics_text(self, line: TrialLine) -> str:
        return "  ".join(f"{name} {metric_text(line.metrics[name])}" for name in self.experiment.summary_columns(line.metrics))

    def _footer(self) -> str:
        return footer_text(self.progress, time.time())

    def _say(self, line: TrialLine, what: str) -> None:
        line.last_printed = time.monotonic()
        self.view.event(f"[{clock(self.progress.elapsed(time.time()))}] {line.name}: {what}")
        self.view.refresh(self.progress, self.experiment, force=True)


def _error_text(trial) -> str:
    """The last line of the trial's error (the exception; Tune keeps the traceback in the trial's
    error file, whose path follows)."""
    try:
        trace = trial.get_error() or ""
    except Exception:  # the console must not fail a sweep over a message; Tune reports the error itself
        trace = ""
    last = next((text.strip() for text in reversed(trace.splitlines()) if text.strip()), "")
    where = f" (traceback: {trial.error_file})" if trial.error_file else ""
    return (last[:200] or "no message") + where


class VerboseReporter(tune.CLIReporter):
    """Ray Tune's own status table, printed only when the sweep is verbose (--verbose)."""

    def should_report(self, trials, done: bool = False) -> bool:
        return is_verbose() and super().should_report(trials, done)


def tune_reporter(spec: SweepSpec) -> VerboseReporter:
    """Tune's table for --verbose: status, epoch and the experiment's summary metrics per trial."""
    varying = list(spec.search.grid) or list(spec.search.optuna.space if spec.search.optuna else {})
    return VerboseReporter(
        metric_columns={"epoch": "epoch", **{name: name for name in get_experiment(spec.experiment).summary_metrics if "*" not in name}},
        parameter_columns={k: k.split(".")[-1] for k in varying},
        max_report_frequency=15,
        max_progress_rows=30,
    )
