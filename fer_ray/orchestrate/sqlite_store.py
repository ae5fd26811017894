"""Read-only look-ups in a local MLflow sqlite store with Python's sqlite3, for ``--dry-run``:
importing mlflow takes 2 s on an idle 2-core machine (15 s under load), more than the whole dry run
may. The queries read MLflow's long-stable ``experiments``, ``runs`` and ``tags`` tables; anything
unexpected (another schema, a locked file) makes them answer None: "checked at start" instead.
"""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path

#: tracking.TAG_SWEEP, TAG_ROLE and ROLE_PARENT (tracking.py imports mlflow; tests check they agree)
TAG_SWEEP, TAG_ROLE, ROLE_PARENT = "fer_ray.sweep", "fer_ray.role", "parent"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def finished_run_with_tag(database: Path, experiment: str, key: str, value: str) -> str | None:
    """The id of the latest FINISHED, not deleted run of ``experiment`` tagged ``key=value``; "" when
    there is none (or no store yet); None when the store cannot be read."""
    rows = _query(
        database,
        """
        select r.run_uuid from runs r join experiments e on e.experiment_id = r.experiment_id
        join tags t on t.run_uuid = r.run_uuid
        where e.name = ? and e.lifecycle_stage = 'active' and r.lifecycle_stage = 'active'
          and r.status = 'FINISHED' and t.key = ? and t.value = ?
        order by r.end_time desc limit 1""",
        (experiment, key, value),
    )
    return None if rows is None else (rows[0][0] if rows else "")


def median_trial_seconds(database: Path, experiment: str, sweep: str) -> tuple[float, int] | None:
    """(median wall seconds, count) of the FINISHED trial (child) runs of sweep ``sweep`` in
    ``experiment``; None when there are none or the store cannot be read."""
    rows = _query(
        database,
        """
        select (r.end_time - r.start_time) / 1000.0 from runs r join experiments e on e.experiment_id = r.experiment_id
        join tags t on t.run_uuid = r.run_uuid
        where e.name = ? and r.lifecycle_stage = 'active' and r.status = 'FINISHED' and r.end_time is not null
          and t.key = ? and t.value = ?
          and not exists (select 1 from tags p where p.run_uuid = r.run_uuid and p.key = ? and p.value = ?)""",
        (experiment, TAG_SWEEP, sweep, TAG_ROLE, ROLE_PARENT),
    )
    if not rows:
        return None
    return statistics.median(row[0] for row in rows), len(rows)


def _query(database: Path, sql: str, parameters: tuple) -> list[tuple] | None:
    if not database.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{database.resolve()}?mode=ro", uri=True, timeout=2) as connection:
            return connection.execute(sql, parameters).fetchall()
    except sqlite3.Error:
        return None
