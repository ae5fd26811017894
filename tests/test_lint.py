"""The code stays clean under the project's ruff rule set (pyproject.toml [tool.ruff]): pyflakes,
import order, syntax and pyupgrade, on fer_ray/, tests/ and benchmarks/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "fer_ray", "tests", "benchmarks"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
