"""The one base class of bad-input errors: input that fails the same way however often it is tried.

The orchestrator never retries a trial that raised one (a retry would fail again, only later): a
missing data folder, a corrupt image, an unusable weights or model file, a spec value that cannot run.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (data, weights, model file, configuration): deterministic, so never retried. The
    message names the file, key or value at fault."""
