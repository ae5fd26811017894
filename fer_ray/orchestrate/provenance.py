"""Where a result came from: git commit, package versions and a stable hash of a resolved spec.

Every MLflow run records these (see tracking.py), so a number in a report can be traced back to the
code and the configuration that produced it. Nothing here imports ray or mlflow, and nothing raises
for a missing git or an absent package: provenance is best-effort, recorded as None / "absent".
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

#: Distributions whose versions every run records (import name differs for scikit-learn: sklearn).
TRACKED_DISTRIBUTIONS: tuple[str, ...] = (
    "torch",
    "torchvision",
    "ray",
    "mlflow",
    "optuna",
    "scikit-learn",
    "numpy",
    "fer_ray",
)

#: What package_versions() reports for a distribution that is not installed.
ABSENT = "absent"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _git(path: Path, *args: str) -> str | None:
    """stdout of ``git -C path args`` stripped, or None when git is missing or the command fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def git_sha(path: str | Path | None = None) -> str | None:
    """The full commit sha checked out at ``path`` (default: the fer_ray source tree).

    Returns None outside a git work tree, in a repository without commits, or without git. The default
    is the package's own folder rather than the working directory, because Ray Tune moves each trial
    into its own trial folder.
    """
    return _git(Path(path) if path is not None else _PACKAGE_DIR, "rev-parse", "--verify", "HEAD")


def git_is_dirty(path: str | Path | None = None) -> bool | None:
    """True when tracked files at ``path`` differ from HEAD (a sha alone would then mislead).

    None where git_sha() would be None. Untracked files are ignored.
    """
    root = Path(path) if path is not None else _PACKAGE_DIR
    if git_sha(root) is None:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def package_versions() -> dict[str, str]:
    """{distribution name: version} for TRACKED_DISTRIBUTIONS plus ``python``; ABSENT if missing."""
    versions: dict[str, str] = {}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = ABSENT
    versions["python"] = platform.python_version()
    return versions


def canonical_json(data: Any) -> str:
    """``data`` as JSON with sorted keys and no whitespace; non-JSON values (Path, ...) via str().

    Note 1 and 1.0 serialise differently, so hash a spec after validation (pydantic's
    ``model_dump(mode="json")``), where every field has one type.
    """
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def spec_hash(data: dict[str, Any]) -> str:
    """The first 12 hex characters of the sha256 of canonical_json(data): key order does not matter."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()[:12]


def provenance_tags() -> dict[str, str]:
    """MLflow tags describing this process's code: git sha, dirty flag, python and package versions.

    Keys: ``fer_ray.git_sha`` ("unknown" outside git), ``fer_ray.git_dirty`` ("true"/"false"/"unknown")
    and ``fer_ray.version.<distribution>``. Cached per process (git runs once); returns a copy.
    """
    return dict(_provenance_tags())


@functools.lru_cache(maxsize=1)
def _provenance_tags() -> dict[str, str]:
    sha = git_sha()
    dirty = git_is_dirty()
    tags = {
        "fer_ray.git_sha": sha or "unknown",
        "fer_ray.git_dirty": "unknown" if dirty is None else str(dirty).lower(),
    }
    tags.update({f"fer_ray.version.{name}": version for name, version in package_versions().items()})
    return tags
