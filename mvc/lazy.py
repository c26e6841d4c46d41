"""Lazy package exports: a package names its API without importing the modules behind it.

A package whose modules are expensive to import (torch, the merge executor) but which
cheap commands import for one small name (``mvc log`` reads merge records) sets
``__all__, __getattr__ = lazy_exports({...})``: each listed name is imported from its
module on first use (PEP 562), and importing the package itself loads none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(modules: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` of a package exporting ``modules``' names (module -> the
    names it provides) without importing any of those modules before a name is used."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(name)
        return getattr(importlib.import_module(module), name)

    return list(where), __getattr__
