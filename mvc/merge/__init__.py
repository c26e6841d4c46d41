"""mvc.merge: the merge pipeline (recipe -> plan, check, execute, record), strategies.

Names are imported lazily, so commands such as `mvc log` read merge records (and the
strategies' declarations) without importing the executor.
"""

from __future__ import annotations

from mvc.lazy import lazy_exports

_EXPORTS = {
    "merge": "mvc.merge.api",
    "MergeOptions": "mvc.merge.api",
    "MergeResult": "mvc.merge.api",
    "MergeParams": "mvc.merge.params",
    "Recipe": "mvc.merge.recipe",
    "run": "mvc.merge.pipeline",
}

__getattr__ = lazy_exports(_EXPORTS)


__all__ = list(_EXPORTS)
