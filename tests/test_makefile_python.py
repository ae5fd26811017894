"""The Makefile's choice of Python for .venv: the newest of python3.13 / 3.12 / 3.11 that runs, unless
PYTHON is set; said out loud. Run with `make -n` (print the recipe, run nothing) against stand-in
interpreters on PATH: one that fails the way a pyenv shim of an unselected version fails, others that run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")


def _bin(tmp_path: Path, runs: list[str], fails: list[str]) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in runs:
        (folder / name).symlink_to(sys.executable)
    for name in fails:  # like `pyenv: python3.13: command not found`, exit 127
        (folder / name).write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
        (folder / name).chmod(0o755)
    return folder


def _make_n(tmp_path: Path, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy(REPO / "Makefile", work / "Makefile")
    (work / "pyproject.toml").touch()
    environment = {k: v for k, v in os.environ.items() if k != "PYTHON"} | {"PATH": f"{folder}:/usr/bin:/bin"} | env
    return subprocess.run([MAKE, "-n", "install"], cwd=work, env=environment, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("runs", "fails", "chosen"),
    [
        (["python3.13", "python3.12", "python3.11"], [], "python3.13"),
        (["python3.12", "python3.11"], ["python3.13"], "python3.12"),
        (["python3.11"], ["python3.13", "python3.12"], "python3.11"),
    ],
    ids=["all-three", "shim-of-3.13", "only-3.11"],
)
def test_newest_python_that_runs_is_chosen_and_named(tmp_path, runs, fails, chosen):
    assert MAKE, "make is not installed"
    done = _make_n(tmp_path, _bin(tmp_path, runs, fails))
    assert done.returncode == 0, done.stderr
    assert f"{chosen} -m venv .venv" in done.stdout
    assert f'echo "Python for .venv: {chosen} (' in done.stdout


def test_python_set_by_the_user_wins(tmp_path):
    done = _make_n(tmp_path, _bin(tmp_path, ["python3.13", "python3.11"], []), PYTHON="python3.11")
    assert done.returncode == 0, done.stderr
    assert "python3.11 -m venv .venv" in done.stdout and "python3.13 -m" not in done.stdout


def test_no_supported_python_is_one_clear_error(tmp_path):
    folder = _bin(tmp_path, [], ["python3.13", "python3.12", "python3.11"])
    work = tmp_path / "checkout"
    assert 'test -n ""' in _make_n(tmp_path, folder).stdout  # nothing chosen
    environment = {k: v for k, v in os.environ.items() if k != "PYTHON"} | {"PATH": f"{folder}:/usr/bin:/bin"}
    done = subprocess.run([MAKE, "install"], cwd=work, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no python3.13, python3.12 or python3.11 runs here" in done.stderr
    assert not (work / ".venv").exists()
