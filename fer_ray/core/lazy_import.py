"""A module imported on first use: what lets an experiment module hold its settings model and its
science in one file, yet be imported in milliseconds where a sweep file is only validated.

``robustness = lazy_module("fer_ray.core.robustness")`` binds a stand-in; the first attribute read
(``robustness.noisy_accuracy``) imports the real module, and every read after that is a lookup in
``sys.modules``. Written by hand (ten lines) rather than with ``importlib.util.LazyLoader``, which
swaps the module object in ``sys.modules`` itself and is not thread-safe before Python 3.12.3
(CPython gh-114763); ``importlib.import_module`` takes the import lock, so two threads reading
the stand-in at once get the one real module.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    """A stand-in for module ``__name__``: every attribute read imports it (once) and reads there."""

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


def lazy_module(name: str) -> types.ModuleType:
    """A stand-in for the module named ``name`` (dotted, absolute) that imports it on first attribute
    read. A misspelt name fails then, with Python's own ModuleNotFoundError."""
    return _LazyModule(name)
