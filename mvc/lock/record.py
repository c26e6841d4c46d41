"""The lock record: the file in a locked commit's tree that says it is locked.

It lives at ``.mvc/lock.json`` so that the lock travels with the commit through push,
fetch and clone like any other file, and `mvc merge` can refuse a locked commit by looking
at the commit alone. It names the commit that was locked, the scheme and the key's public
fingerprint, never the key. Reading it needs neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mvc.errors import FormatError
from mvc.formats.jsonutil import strict_loads
from mvc.repo.references import LOCK_RECORD_PATH

if TYPE_CHECKING:
    from mvc.repo import Repo

RECORD_VERSION = 2  # 2 adds levels; version 1 records are attention-only locks
READABLE_VERSIONS = (1, 2)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys), so identical locks make identical trees."""
    return (json.dumps(dict(record), sort_keys=True, indent=2) + "\n").encode()


def decode_record(data: bytes) -> dict[str, Any]:
    """Parse and validate a lock record; an unknown version is an error, not a guess."""
    doc = strict_loads(data, LOCK_RECORD_PATH)
    if not isinstance(doc, dict) or doc.get("mvc") != "lock":
        raise FormatError(f"{LOCK_RECORD_PATH} is not an mvc lock record")
    if doc.get("version") not in READABLE_VERSIONS:
        raise FormatError(
            f"{LOCK_RECORD_PATH} has version {doc.get('version')!r}; this mvc reads "
            f"version {RECORD_VERSION}",
            hint="upgrade mvc",
        )
    return doc


def lock_record(repo: Repo, rev: str) -> dict[str, Any] | None:
    """The commit's lock record, or None when the commit is not locked."""
    files = repo.tree_files(rev)
    if LOCK_RECORD_PATH not in files:
        return None
    return decode_record(repo.read_blob(files[LOCK_RECORD_PATH][0]))


def is_locked(repo: Repo, rev: str) -> bool:
    """True when ``rev`` is a MergeLock'ed commit (what `mvc merge` refuses)."""
    record = lock_record(repo, rev)
    return bool(record and record.get("locked"))
