"""mvc.merge: the merge pipeline (recipe -> plan, check, execute, record), strategies.

Names are imported lazily, so commands such as `mvc log` read merge records (and the
strategies' declarations) without importing the executor.
"""

from __future__ import annotations

from mvc.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    {
        "mvc.merge.api": ("merge", "MergeOptions", "MergeResult"),
        "mvc.merge.params": ("MergeParams",),
        "mvc.merge.recipe": ("Recipe",),
        "mvc.merge.pipeline": ("run",),
    }
)
