"""The code stays clean under the project's ruff set-up (pyproject.toml [tool.ruff]): the lint rules
(pyflakes, import order, syntax, pyupgrade) and the formatter, on fer_ray/, tests/ and benchmarks/.
Fix with ``ruff check --fix`` and ``ruff format`` (both in the test extras)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command):
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "fer_ray", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
