"""Garbage collection of the tensor store: delete what nothing live needs, bases last.

Only objects present locally are considered: a live object that is missing (promised by a
remote, see `ObjectStore.promisor`) is never fetched just to learn its base.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mvc.errors import CorruptObjectError, NotFoundError
from mvc.files import TEMP_PREFIX
from mvc.store.objfile import MAX_DELTA_DEPTH

if TYPE_CHECKING:
    from mvc.store.objects import ObjectStore

STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class GcReport:
    kept: int
    deleted: int
    freed_bytes: int


def _base(store: ObjectStore, oid: str) -> str | None:
    return store.info(oid).base


def _depth(store: ObjectStore, oid: str) -> int:
    try:
        return store.info(oid).depth
    except (CorruptObjectError, NotFoundError):
        return MAX_DELTA_DEPTH + 1  # unreadable: nothing can decode through it anyway


def collect_garbage(store: ObjectStore, live: Iterable[str]) -> GcReport:
    """Delete every object not in ``live`` nor a delta base of a live object.

    Also removes temp files left by crashed writers more than an hour ago. The caller
    must hold the repository lock: an object put during gc is not in ``live``.
    """
    keep: set[str] = set()
    for oid in live:
        current: str | None = oid
        while current is not None and current not in keep and store.has(current):
            keep.add(current)
            try:
                current = _base(store, current)
            except CorruptObjectError:
                current = None
    kept = deleted = freed = 0
    garbage = []
    for oid in store.ids():
        if oid in keep:
            kept += 1
        else:
            garbage.append(oid)
    # Deepest deltas first: a gc killed midway never leaves an object without its base.
    garbage.sort(key=lambda oid: _depth(store, oid), reverse=True)
    for oid in garbage:
        path = store.path(oid)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        deleted += 1
        freed += size
    cutoff = time.time() - STALE_TEMP_SECONDS
    if store.objects.is_dir():
        for tmp in store.objects.glob(f"*/{TEMP_PREFIX}*"):
            try:
                st = tmp.stat()
                if st.st_mtime < cutoff:
                    tmp.unlink()
                    freed += st.st_size
            except FileNotFoundError:
                continue
    return GcReport(kept, deleted, freed)
