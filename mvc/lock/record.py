"""The lock record: the file in a locked commit's tree that says it is locked.

It lives at ``.mvc/lock.json`` so that the lock travels with the commit through push,
fetch and clone like any other file, and `mvc merge` can refuse a locked commit by looking
at the commit alone. It names the commit that was locked, the scheme and the key's public
fingerprint, never the key. Reading it needs neither torch nor transformers; its type
(`LOCK_RECORD`) and `is_locked` live in `mvc.repo.records`, below merge and lineage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mvc.repo.records import LOCK_RECORD, is_locked
from mvc.repo.references import LOCK_RECORD_PATH

if TYPE_CHECKING:
    from mvc.repo import Repo

__all__ = [
    "LOCK_RECORD",
    "LOCK_RECORD_PATH",
    "RECORD_VERSION",
    "encode_record",
    "is_locked",
    "lock_record",
]

RECORD_VERSION = LOCK_RECORD.version

encode_record = LOCK_RECORD.encode


def lock_record(repo: Repo, rev: str) -> dict[str, Any] | None:
    """The commit's lock record, or None when the commit is not locked."""
    return LOCK_RECORD.read(repo, repo.resolve(rev))
