"""MLflow tracking for sweeps: one parent run per sweep, one child run per trial, found again by tag.

A ``Tracker`` is a picklable (uri, experiment) pair; it travels to Ray workers, and each trial logs to
its own child run from the process that produced the numbers and files (so artifacts upload from the
node that made them). Every call goes through an explicit ``mlflow.MlflowClient(uri)``: no
``mlflow.start_run`` / active-run globals, so concurrent trials in one process never cross.

Idempotence, by tag rather than by memory:
- parent: the run tagged ``fer_ray.sweep_id = <sweep_id>`` (and role parent) is reused on resume;
- child: the run tagged ``mlflow.parentRunId = <parent>`` and ``fer_ray.trial_key = <key>`` is reused
  when Tune retries or resumes a trial; a reused run goes back to RUNNING and its
  ``fer_ray.attempts`` tag counts up. Creating the *same* trial key from two processes at the same
  instant is not guarded (Tune runs one attempt of a trial at a time).

Backends: ``sqlite:///<path>/mlflow.db`` (a relative path is made absolute; artifacts of experiments
created here go to ``<db folder>/mlartifacts``, never to the trial's working folder), an
``http(s)://`` tracking server (artifacts proxied by ``mlflow server --artifacts-destination``), or a
SQLAlchemy database URI. MLflow 3 refuses the ./mlruns file store, and so does this module.
On sqlite, call ``check()`` once in the driver before starting workers: it creates the tables, and two
processes creating them at once can collide. After that, concurrent writers are fine: MLflow sets a
busy timeout and calls here retry 'database is locked' with backoff.

Names: MLflow keys may only hold letters, digits, ``_ - . / : `` and spaces. ``mlflow_key`` maps any
other character (``acc@eps=0.01`` -> ``acc_at_eps_0.01``); every logging call applies it, so look runs
up with ``mlflow_key(name)``. Values: params and tags become ``str``; a param longer than
``MAX_PARAM_VAL_LENGTH`` is truncated and the full text is logged as artifact
``params_full/<key>.txt``; a tag longer than ``MAX_TAG_VAL_LENGTH`` is truncated. Metrics become
``float``; +-inf is logged as NaN (sqlite would otherwise store +-1.8e308, which poisons means).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from fer_ray.orchestrate.provenance import provenance_tags, spec_hash

_log = logging.getLogger(__name__)

TAG_ROLE = "fer_ray.role"
TAG_SWEEP = "fer_ray.sweep"
TAG_SWEEP_ID = "fer_ray.sweep_id"
TAG_TRIAL_KEY = "fer_ray.trial_key"
TAG_ATTEMPTS = "fer_ray.attempts"
TAG_SPEC_HASH = "fer_ray.spec_hash"
#: a child run's varying values (its grid point / Optuna sample) as JSON: the report reads them back typed
TAG_TRIAL_VALUES = "fer_ray.trial_values"
#: an evaluation run's model (runs:/ URI, models:/ URI or path) and, when it came from a run, that run's id
TAG_SOURCE_MODEL = "fer_ray.source_model"
TAG_SOURCE_RUN = "fer_ray.source_run"
#: set on a child run the scheduler (ASHA) stopped early (its status is then KILLED)
TAG_STOPPED_EARLY = "fer_ray.stopped_early"
#: MLflow's own tag: the UI nests a run under the run with this id.
TAG_PARENT = "mlflow.parentRunId"
#: MLflow's own run tag: the run's description (markdown), shown as its note in the UI.
TAG_NOTE = "mlflow.note.content"
#: MLflow 3's experiment tag choosing the UI's view: model training (runs, metrics, charts), not
#: the GenAI view (traces, judges, prompts; child runs called "Evaluations").
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ROLE_PARENT = "parent"
ROLE_CHILD = "child"

#: Seconds the ``GET /health`` probe of an http(s) server may take before check() gives up.
HEALTH_TIMEOUT_S = 5.0
#: Total seconds a call keeps retrying while sqlite says 'database is locked'.
LOCK_RETRY_BUDGET_S = 60.0
#: Statuses finish() accepts.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

_SQLITE_PREFIX = "sqlite:///"
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_HTTP_SCHEMES = ("http", "https")
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_TRUNCATION_MARK = " ...[truncated]"

T = TypeVar("T")


class TrackingError(RuntimeError):
    """MLflow cannot be used as configured: unreachable server, unsupported URI, deleted experiment."""


class ParamConflictError(TrackingError, ValueError):
    """A run already holds a param with a different value (MLflow params are write-once)."""


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def normalize_uri(uri: str) -> str:
    """``uri`` with a relative sqlite path made absolute; TrackingError for unsupported schemes.

    Accepted: ``sqlite:///rel/or/abs.db``, ``http(s)://host:port``, and SQLAlchemy URIs for
    postgresql / mysql / mssql (``+driver`` allowed). A bare path or ``file:`` URI is refused: MLflow 3
    no longer uses the ./mlruns file store by default.
    """
    uri = str(uri).strip()
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        if not uri.startswith(_SQLITE_PREFIX) or uri == _SQLITE_PREFIX:
            raise TrackingError(
                f"MLflow tracking URI {uri!r} is not a sqlite file URI; write sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db"
            )
        db_path = Path(unquote(uri[len(_SQLITE_PREFIX) :])).expanduser()
        return _SQLITE_PREFIX + str(db_path.resolve())
    if scheme in _HTTP_SCHEMES:
        return uri.rstrip("/")
    if scheme in _DATABASE_SCHEMES:
        return uri
    raise TrackingError(
        f"unsupported MLflow tracking URI {uri!r}: use sqlite:///path/to/mlflow.db, "
        "http://host:port of an `mlflow server`, or a postgresql/mysql/mssql SQLAlchemy URI "
        "(the ./mlruns file store is not supported by MLflow 3)"
    )


def mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow param / metric / tag key: ``@`` -> ``_at_``, other invalid -> ``_``.

    Example: ``acc@eps=0.01`` -> ``acc_at_eps_0.01``; ``model.arch`` is unchanged.
    """
    return _INVALID_KEY_CHARS.sub("_", str(name).replace("@", "_at_"))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str | float | int | bool]:
    """Nested mappings as one level with dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

    str / int / float / bool stay as they are; lists and tuples become JSON text
    (``[1, 2]`` -> ``"[1, 2]"``); an empty mapping becomes ``"{}"`` so the key is not lost; None and
    anything else become ``str(value)``.
    """
    flat: dict[str, str | float | int | bool] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted) if value else {dotted: "{}"})
        elif isinstance(value, (list, tuple)):
            flat[dotted] = json.dumps(list(value), sort_keys=True, default=str)
        elif isinstance(value, (str, int, float, bool)):
            flat[dotted] = value
        else:
            flat[dotted] = str(value)
    return flat


def _quote(value: str) -> str:
    """``value`` as a string literal for an MLflow search filter (it has no escape syntax)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search for {value!r}: it holds both quote characters")


def tag_filter(key: str, value: str) -> str:
    """An MLflow filter clause matching runs whose tag ``key`` equals ``value`` exactly."""
    if "`" in key:
        raise ValueError(f"tag key {key!r} must not contain a backtick")
    return f"tags.`{key}` = {_quote(value)}"


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


def _keyed(items: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``items`` with mlflow_key() keys; ValueError when two keys collapse onto one."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in items.items():
        key = mlflow_key(name)
        if key in out:
            raise ValueError(f"{what} {origin[key]!r} and {name!r} both map to MLflow key {key!r}")
        out[key], origin[key] = value, str(name)
    return out


def _metric_value(key: str, value: Any) -> float:
    """``value`` as a float for MLflow; +-inf -> NaN; ValueError naming ``key`` if not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metric {key!r} must be a number, got {value!r}") from exc
    return number if math.isfinite(number) or math.isnan(number) else math.nan


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry_locked(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried with jittered exponential backoff on sqlite lock errors."""
    deadline = time.monotonic() + LOCK_RETRY_BUDGET_S
    delay = 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
            _log.debug("sqlite busy in %s; retrying in %.2fs", getattr(call, "__name__", call), delay)
            time.sleep(delay * (0.5 + random.random()))  # jitter: two waiters must not retry in step
            delay = min(delay * 2, 2.0)


def _probe_health(uri: str, timeout_s: float) -> None:
    """GET ``<uri>/health`` once; TrackingError naming ``uri`` if the server does not answer OK.

    Done by hand because MLflow's own client retries for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT) before failing.
    """
    advice = (
        "check that `mlflow server` is running there (e.g. `mlflow server --host 127.0.0.1 --port "
        "5000 --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts`), that "
        "the host and port are right and reachable from this machine, or use sqlite:///mlflow.db"
    )
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); {advice}") from exc
    if status != 200:
        raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {status}; {advice}")


# ---------------------------------------------------------------------------------------------
# Per-process caches (a Tracker itself holds only strings, so it pickles to Ray workers)
# ---------------------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_clients: dict[tuple[int, str], mlflow.MlflowClient] = {}
_experiment_ids: dict[tuple[int, str, str], str] = {}


def _client_for(uri: str) -> mlflow.MlflowClient:
    """One MlflowClient per (process, uri); keyed by pid so a forked child never reuses a pool.
    The model registry is the same URI: never the process-global registry URI (set_registry_uri,
    MLFLOW_REGISTRY_URI), which a Ray worker lacks and which may point at another server."""
    key = (os.getpid(), uri)
    with _cache_lock:
        if key not in _clients:
            _clients[key] = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        return _clients[key]


@dataclass(frozen=True)
class Tracker:
    """MLflow runs of one experiment at one tracking URI. Picklable; safe to share across threads.

    Attributes:
        uri: tracking URI; a relative ``sqlite:///`` path is made absolute on construction.
        experiment: experiment name; created on first use.
    """

    uri: str
    experiment: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", normalize_uri(self.uri))
        if not str(self.experiment).strip():
            raise TrackingError(f"MLflow experiment name must not be empty (tracking URI {self.uri})")

    # -- connection ----------------------------------------------------------------------------

    @property
    def client(self) -> mlflow.MlflowClient:
        """The process's MlflowClient for ``uri`` (for MLflow calls this class does not wrap)."""
        return _client_for(self.uri)

    def check(self) -> str:
        """Connect, create or fetch the experiment, and return its id.

        Raises TrackingError within seconds naming the URI and what to check: unreachable or unhealthy
        http server, unusable database (e.g. a folder that cannot be created), deleted experiment.
        """
        if self.uri.split("://", 1)[0].lower() in _HTTP_SCHEMES:
            _probe_health(self.uri, HEALTH_TIMEOUT_S)
        with _cache_lock:
            _experiment_ids.pop((os.getpid(), self.uri, self.experiment), None)
        try:
            return self.experiment_id()
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"cannot open MLflow experiment {self.experiment!r} at {self.uri}: {exc}; check that "
                "the URI is right and the database file's folder is writable"
            ) from exc

    def experiment_id(self) -> str:
        """The experiment's id, created if missing (cached per process)."""
        key = (os.getpid(), self.uri, self.experiment)
        with _cache_lock:
            cached = _experiment_ids.get(key)
        if cached is not None:
            return cached
        experiment_id = self._get_or_create_experiment()
        with _cache_lock:
            _experiment_ids[key] = experiment_id
        return experiment_id

    def _get_or_create_experiment(self) -> str:
        existing = _retry_locked(self.client.get_experiment_by_name, self.experiment)
        if existing is None:
            try:
                return _retry_locked(
                    self.client.create_experiment,
                    self.experiment,
                    self._artifact_location(),
                    tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
                )
            except MlflowException:
                existing = _retry_locked(self.client.get_experiment_by_name, self.experiment)
                if existing is None:  # not the 'created meanwhile by another process' race
                    raise
        if existing.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} at {self.uri} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {existing.experiment_id}`) or "
                "choose another experiment name"
            )
        if TAG_EXPERIMENT_KIND not in existing.tags:  # made before fer_ray set it, or by hand
            _retry_locked(self.client.set_experiment_tag, existing.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return existing.experiment_id

    def _artifact_location(self) -> str | None:
        """``<db folder>/mlartifacts`` for sqlite (MLflow's default is relative to the cwd, which
        Ray Tune changes per trial); None (the server's choice) otherwise."""
        if not self.uri.startswith(_SQLITE_PREFIX):
            return None
        return (Path(self.uri[len(_SQLITE_PREFIX) :]).parent / "mlartifacts").as_uri()

    # -- runs ----------------------------------------------------------------------------------

    def parent_run(
        self,
        sweep_name: str,
        sweep_id: str,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """The run id of the sweep's parent run: reused if one is tagged ``sweep_id``, else created.

        The run is named ``sweep_name`` and tagged role=parent, sweep, sweep_id, plus provenance (git
        sha, package versions) and ``tags``. ``params`` (nested allowed) are flattened and logged;
        ParamConflictError if a reused run holds a different value.
        """
        existing = self._find_single(f"{tag_filter(TAG_SWEEP_ID, sweep_id)} and {tag_filter(TAG_ROLE, ROLE_PARENT)}")
        run_tags = {**(tags or {}), TAG_ROLE: ROLE_PARENT, TAG_SWEEP: sweep_name, TAG_SWEEP_ID: sweep_id}
        return self._open_run(existing, sweep_name, run_tags, params or {})

    def child_run(
        self,
        parent_id: str,
        trial_key: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """The run id of one trial's run under ``parent_id``: reused if ``trial_key`` has one.

        A new run carries ``mlflow.parentRunId`` (nested in the UI), role=child, the trial key,
        provenance and ``tags``; the parent's ``fer_ray.sweep`` / ``fer_ray.sweep_id`` are copied so
        child runs can be filtered by sweep. A reused run is set RUNNING again and its tags updated.
        Params as in parent_run().
        """
        existing = self._find_single(f"{tag_filter(TAG_PARENT, parent_id)} and {tag_filter(TAG_TRIAL_KEY, trial_key)}")
        inherited: dict[str, str] = {}
        if existing is None:
            parent_tags = _retry_locked(self.client.get_run, parent_id).data.tags
            inherited = {k: parent_tags[k] for k in (TAG_SWEEP, TAG_SWEEP_ID) if k in parent_tags}
        run_tags = {
            **inherited,
            **(tags or {}),
            TAG_ROLE: ROLE_CHILD,
            TAG_PARENT: parent_id,
            TAG_TRIAL_KEY: trial_key,
        }
        return self._open_run(existing, run_name, run_tags, params or {})

    def _find_single(self, filter_string: str) -> Run | None:
        """The oldest active run matching ``filter_string``; warns if there is more than one."""
        runs = self.find_runs(filter_string, order_by=["attributes.start_time ASC"])
        if len(runs) > 1:
            _log.warning(
                "%d MLflow runs match %s; reusing the oldest, %s",
                len(runs),
                filter_string,
                runs[0].info.run_id,
            )
        return runs[0] if runs else None

    def _open_run(self, existing: Run | None, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        all_tags = {**provenance_tags(), **tags}
        if existing is None:
            all_tags[TAG_ATTEMPTS] = "1"
            tag_values = {k: _truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in all_tags.items()}
            run = _retry_locked(
                self.client.create_run,
                self.experiment_id(),
                tags=_keyed(tag_values, "tag"),
                run_name=run_name,
            )
        else:
            run = existing
            attempts = int(existing.data.tags.get(TAG_ATTEMPTS, "1")) + 1
            running = RunStatus.to_string(RunStatus.RUNNING)
            _retry_locked(self.client.update_run, run.info.run_id, status=running)
            self.set_tags(run.info.run_id, {**all_tags, TAG_ATTEMPTS: str(attempts)})
        self.log_params(run.info.run_id, params, known_run=run)
        return run.info.run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED) and the current time."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"run status must be one of {TERMINAL_STATUSES}, got {status!r}")
        _retry_locked(self.client.set_terminated, run_id, status=status)

    # -- logging -------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: Mapping[str, Any], known_run: Run | None = None) -> None:
        """Log ``params`` (flattened, keys via mlflow_key, values as str) that the run lacks.

        A key already logged with the same value is skipped, so re-logging is harmless; a different
        value raises ParamConflictError naming the key and both values (nothing is logged then).
        Values over MAX_PARAM_VAL_LENGTH are truncated; the full text goes to
        ``params_full/<key>.txt``. ``known_run``: the run as just fetched (saves one query).
        """
        wanted = {key: str(value) for key, value in _keyed(flatten(params), "param").items()}
        if not wanted:
            return
        run = known_run if known_run is not None else _retry_locked(self.client.get_run, run_id)
        logged = run.data.params
        stored = {key: _truncate(value, MAX_PARAM_VAL_LENGTH) for key, value in wanted.items()}
        conflicts = [key for key, value in stored.items() if key in logged and logged[key] != value]
        if conflicts:
            details = "; ".join(f"{key!r}: logged {logged[key]!r}, now {stored[key]!r}" for key in sorted(conflicts))
            raise ParamConflictError(
                f"MLflow run {run_id} already has different values for params {details}. "
                "Params are write-once: a changed configuration needs a new sweep id / trial key"
            )
        new = [Param(key, value) for key, value in stored.items() if key not in logged]
        for batch in _chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            _retry_locked(self.client.log_batch, run_id, params=batch, synchronous=True)
        for key, value in wanted.items():
            if key not in logged and len(value) > MAX_PARAM_VAL_LENGTH:
                self.log_text(run_id, value, f"params_full/{key}.txt")

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (overwrite) tags; keys via mlflow_key, values as str truncated to MAX_TAG_VAL_LENGTH."""
        run_tags = [RunTag(key, _truncate(str(value), MAX_TAG_VAL_LENGTH)) for key, value in _keyed(tags, "tag").items()]
        for batch in _chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
            _retry_locked(self.client.log_batch, run_id, tags=batch, synchronous=True)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numbers at ``step`` (default 0) in batches; keys via mlflow_key; +-inf logged as NaN.

        Raises ValueError naming the key for a value that is not a number.
        """
        timestamp_ms = int(time.time() * 1000)
        batch_metrics = [
            Metric(key, _metric_value(key, value), timestamp_ms, int(step or 0)) for key, value in _keyed(metrics, "metric").items()
        ]
        for batch in _chunks(batch_metrics, MAX_METRICS_PER_BATCH):
            _retry_locked(self.client.log_batch, run_id, metrics=batch, synchronous=True)

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under ``artifact_path`` (default: the root)."""
        path = Path(local_path)
        if not path.exists():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or folder")
        if path.is_dir():
            _retry_locked(self.client.log_artifacts, run_id, str(path), artifact_path)
        else:
            _retry_locked(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_figure(self, run_id: str, figure: Any, name: str) -> str:
        """Save a matplotlib figure as PNG artifact ``name`` (``.png`` added if missing); returns the
        artifact path. The figure is left open: the caller closes it."""
        artifact_file = name if name.lower().endswith(".png") else f"{name}.png"
        _retry_locked(self.client.log_figure, run_id, figure, artifact_file)
        return artifact_file

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        """Save ``data`` as JSON or YAML (by the file's extension) under ``artifact_file``."""
        _retry_locked(self.client.log_dict, run_id, dict(data), artifact_file)

    def log_spec(self, run_id: str, spec: Mapping[str, Any], artifact_file: str = "spec.json") -> str:
        """Record a resolved spec: the JSON artifact ``artifact_file`` plus tag ``fer_ray.spec_hash``
        (provenance.spec_hash of ``spec``, returned)."""
        digest = spec_hash(dict(spec))
        self.log_dict(run_id, spec, artifact_file)
        self.set_tags(run_id, {TAG_SPEC_HASH: digest})
        return digest

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Save ``text`` under ``artifact_file`` (e.g. ``reports/summary.md``)."""
        _retry_locked(self.client.log_text, run_id, text, artifact_file)

    # -- reading back --------------------------------------------------------------------------

    def artifact_paths(self, run_id: str, path: str | None = None) -> list[str]:
        """Every artifact file of the run under ``path`` (recursive), as run-relative paths."""
        files: list[str] = []
        for info in _retry_locked(self.client.list_artifacts, run_id, path):
            files.extend(self.artifact_paths(run_id, info.path) if info.is_dir else [info.path])
        return sorted(files)

    def download_artifact(self, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
        """Download one artifact file or folder of a run into ``dst_dir`` (created); its local path."""
        dst = Path(dst_dir)
        dst.mkdir(parents=True, exist_ok=True)
        return Path(_retry_locked(self.client.download_artifacts, run_id, artifact_path, str(dst.resolve())))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, ordered by step; ``key`` is passed through mlflow_key."""
        history = _retry_locked(self.client.get_metric_history, run_id, mlflow_key(key))
        return sorted((metric.step, metric.value) for metric in history)

    def find_runs(self, filter_string: str = "", order_by: list[str] | None = None) -> list[Run]:
        """Every active run of the experiment matching an MLflow filter (all pages).

        Tag keys with dots need backticks: ``tags.`fer_ray.sweep` = 'noise'`` (see tag_filter()).
        """
        runs: list[Run] = []
        page_token = None
        while True:
            page = _retry_locked(
                self.client.search_runs,
                [self.experiment_id()],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=order_by,
                page_token=page_token,
            )
            runs.extend(page)
            page_token = page.token
            if not page_token:
                return runs

    def find_finished_run(self, tag_key: str, tag_value: str) -> Run | None:
        """The most recently ended FINISHED run whose tag ``tag_key`` equals ``tag_value``, or None.

        Used to reuse a finished training run that carries a config hash.
        """
        runs = self.find_runs(
            f"{tag_filter(tag_key, tag_value)} and attributes.status = 'FINISHED'",
            order_by=["attributes.end_time DESC"],
        )
        return runs[0] if runs else None

    def get_run(self, run_id: str) -> Run:
        """One run by id (MlflowException when there is none)."""
        return _retry_locked(self.client.get_run, run_id)

    def child_runs(self, parent_id: str) -> list[Run]:
        """The child runs of ``parent_id``, oldest first."""
        return self.find_runs(tag_filter(TAG_PARENT, parent_id), order_by=["attributes.start_time ASC"])

    def children(self, parent_id: str) -> pd.DataFrame:
        """The child runs of ``parent_id`` as one row each, oldest first, like mlflow.search_runs.

        Columns: run_id, run_name, status, start_time, end_time (UTC timestamps), artifact_uri, then
        ``params.<key>`` (str), ``metrics.<key>`` (latest value, float) and ``tags.<key>`` (str);
        a run lacking a key holds NaN there. No children: an empty frame with the fixed columns.
        """
        return runs_frame(self.child_runs(parent_id))


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """MLflow runs as a DataFrame (see Tracker.children for the columns)."""
    info_columns = ["run_id", "run_name", "status", "start_time", "end_time", "artifact_uri"]
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
            "artifact_uri": run.info.artifact_uri,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=info_columns)
    return pd.DataFrame(rows)
