"""MergeLock: output-preserving weight transforms that make a model unmergeable.

The public API is re-exported lazily: `mvc.lock.record` (is a commit locked?) and
`mvc.lock.keys` must stay importable without torch, so `mvc merge` and `mvc keygen` do not
pay for it; the transform, the equivalence check and the commit operations import torch.
"""

from __future__ import annotations

from mvc.lazy import lazy_exports

_EXPORTS = {
    "keygen": "mvc.lock.keys",
    "load_key": "mvc.lock.keys",
    "key_id": "mvc.lock.keys",
    "LOCK_RECORD_PATH": "mvc.lock.record",
    "is_locked": "mvc.lock.record",
    "lock_record": "mvc.lock.record",
    "plan_lock": "mvc.lock.families",
    "plan_for": "mvc.lock.transform",
    "lock_tensors": "mvc.lock.transform",
    "unlock_tensors": "mvc.lock.transform",
    "check_equivalence": "mvc.lock.equivalence",
    "lock_commit": "mvc.lock.commit",
    "unlock_commit": "mvc.lock.commit",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(_EXPORTS)
