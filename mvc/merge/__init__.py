"""mvc.merge: three-way planner, strategies, streaming executor, merge records.

Names are imported lazily, so commands such as `mvc log` read merge records without
importing the executor and strategies.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "merge": "mvc.merge.api",
    "MergeOptions": "mvc.merge.api",
    "MergeResult": "mvc.merge.api",
    "MergeParams": "mvc.merge.params",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
