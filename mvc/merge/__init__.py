"""mvc.merge: the merge pipeline (recipe -> plan, check, execute, record), strategies.

Names are imported lazily, so commands such as `mvc log` read merge records (and the
strategies' declarations) without importing the executor.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "merge": "mvc.merge.api",
    "MergeOptions": "mvc.merge.api",
    "MergeResult": "mvc.merge.api",
    "MergeParams": "mvc.merge.params",
    "Recipe": "mvc.merge.recipe",
    "run": "mvc.merge.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
