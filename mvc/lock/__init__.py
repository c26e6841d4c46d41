"""MergeLock: output-preserving weight transforms that make a model unmergeable.

The public API is re-exported lazily: `mvc.lock.record` (is a commit locked?) and
`mvc.lock.keys` must stay importable without torch, so `mvc merge` and `mvc keygen` do not
pay for it; the transform, the equivalence check and the commit operations import torch.
"""

from __future__ import annotations

from mvc.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    {
        "mvc.lock.keys": ("keygen", "load_key", "key_id"),
        "mvc.lock.record": ("LOCK_RECORD_PATH", "is_locked", "lock_record"),
        "mvc.lock.families": ("plan_lock",),
        "mvc.lock.transform": ("plan_for", "lock_tensors", "unlock_tensors"),
        "mvc.lock.equivalence": ("check_equivalence",),
        "mvc.lock.commit": ("lock_commit", "unlock_commit"),
    }
)
