"""Tensors that grew along dim 0 on one branch (new token rows) and changed on another.

Adding tokens appends rows to the embedding (and ``lm_head``); a fine-tune on another
branch changes the same tensor in its old shape. That is no shape conflict: the rows both
sides have (the base's) are resolved by the strategy over every branch that changed the
tensor, and the appended rows are taken from the branch that added them. Two branches that
both appended rows are a conflict, naming the row counts: which rows are which tokens is
for the user to decide.

Chunk boundaries sit at fixed row offsets (``mvc.store.chunking``), so the grown side's
chunks start where the base's do, and all but its last shared chunk hold the same rows.
A side stored in another chunking (another repository's chunk size, or a file
re-ingested with one) still merges: :func:`rows_of` reads it in the base's chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mvc.repo.manifest import TensorEntry
from mvc.store.bases import grows_from

if TYPE_CHECKING:
    from mvc.store import ObjectStore


def rows_of(
    store: ObjectStore,
    entry: TensorEntry,
    index: int,
    start: int,
    stop: int,
    row_nbytes: int,
    known: Mapping[str, bytes | memoryview] | None = None,
) -> memoryview:
    """Rows [start, stop) of ``entry``'s tensor, where the base's chunk ``index`` holds them.

    Usually ``entry``'s own chunk ``index`` starts there too (same chunking, or a grown
    last chunk) and its first rows are returned without a copy; otherwise the rows are
    gathered from the chunks of ``entry`` that cover them, so chunks are never paired by
    index alone.
    """
    size = (stop - start) * row_nbytes
    if index < len(entry.chunks):
        own = entry.chunks[index]
        if own.start == start and own.stop >= stop:
            return store.get_view(own.oid, known=known)[:size]
    parts = [
        store.get_view(c.oid, known=known)[
            (max(c.start, start) - c.start) * row_nbytes : (min(c.stop, stop) - c.start)
            * row_nbytes
        ]
        for c in entry.chunks
        if c.start < stop and c.stop > start
    ]
    return memoryview(b"".join(parts))


def same_grid(a: TensorEntry, b: TensorEntry) -> bool:
    """Same dtype and shape: the rows pair up element for element, whatever the chunking."""
    return a.dtype == b.dtype and a.shape == b.shape


def appended_side(
    base: TensorEntry, changed: Sequence[TensorEntry]
) -> tuple[int | None, str | None]:
    """Which of ``changed`` appended rows to ``base``: ``(position, None)``; ``(None,
    reason)`` when rows were appended but the merge cannot line them up; ``(None, None)``
    when no branch grew the tensor (so the usual shape rules apply)."""
    if any(e.dtype != base.dtype or not grows_from(base.shape, e.shape) for e in changed):
        return None, None
    rows = base.shape[0] if base.shape else 0
    grown = [i for i, e in enumerate(changed) if e.shape and e.shape[0] > rows]
    if not grown:
        return None, None
    if len(grown) > 1:
        counts = " and ".join(str(changed[i].shape[0]) for i in grown)
        return None, (
            f"rows appended on several branches ({counts} rows, base {rows}); merge one "
            "branch's new tokens into the other first, or pick a side for this tensor "
            "with a --config rule (strategy ours or theirs)"
        )
    entry = changed[grown[0]]
    if not _lines_up(base, entry):
        return None, f"rows appended ({entry.shape[0]} rows, base {rows}) in another chunking"
    return grown[0], None


def _lines_up(base: TensorEntry, grown: TensorEntry) -> bool:
    """The grown tensor's chunks start where the base's do, the last shared one longer."""
    if len(grown.chunks) < len(base.chunks):
        return False
    last = len(base.chunks) - 1
    for i, chunk in enumerate(base.chunks):
        other = grown.chunks[i]
        if other.start != chunk.start or (
            other.stop != chunk.stop if i < last else other.stop < chunk.stop
        ):
            return False
    return True
