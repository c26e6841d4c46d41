"""Lazy package exports: a package names its API without importing the modules behind it.

A package whose modules are expensive to import (torch, the merge executor) but which
cheap commands import for one small name (``mvc log`` reads merge records) sets
``__getattr__ = lazy_exports({...})``: each listed name is imported from its module on
first use (PEP 562), and importing the package itself loads none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving each name of ``exports`` (name -> module)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(name)
        return getattr(importlib.import_module(module), name)

    return __getattr__
