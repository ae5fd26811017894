"""Files written safely: all at once or not at all, and computed once per node.

``atomic_write``: write to a temp file in the target's folder, then ``os.replace`` it into place, so
no reader ever sees a partial file and a failed write leaves nothing behind (not even the temp file).
``node_cached``: a per-node file cache guarded by a lock file, so concurrent trials on one node
compute a value once and the others wait and load it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def default_cache_dir() -> Path:
    """Where fer_ray keeps generated data and tensor caches: $FER_RAY_CACHE, else ~/.cache/fer_ray."""
    configured = os.environ.get("FER_RAY_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fer_ray"


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temp_path)`` on a temp file beside ``path`` (same folder, same suffix, so writers
    that add a suffix, such as numpy's, add none), then move it to ``path``. The folder is created.
    On any error the temp file is removed and the error re-raised; ``path`` is then untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(descriptor)
    temporary = Path(name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def node_cached(path: Path, compute: Callable[[], T], save: Callable[[T, Path], object], load: Callable[[Path], T | None]) -> T:
    """``load(path)`` if the file exists and loads (``load`` returns None for an unusable file);
    else ``compute()`` it once on this node and save it there (atomic_write).

    An exclusive fcntl.flock on ``<path>.lock`` makes concurrent callers (the trials of one node) wait
    while the first one computes; they then load its file. (flock is advisory and per host; on a
    shared network folder, nodes may each compute once, which is still correct.)
    """
    path = Path(path)
    if path.is_file() and (value := load(path)) is not None:
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.is_file() and (value := load(path)) is not None:  # another trial computed it while we waited
            return value
        value = compute()
        atomic_write(path, lambda temporary: save(value, temporary))
    return value


def node_cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """node_cached for a JSON-able dict (small per-node results such as a model's test accuracy)."""
    return node_cached(path, compute, save=lambda value, p: p.write_text(json.dumps(value)), load=lambda p: json.loads(p.read_text()))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (identifies a model file across nodes and downloads)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
