"""Deterministic splitting of tensors into row chunks and of buffers into pieces.

Row chunks are the unit the repository stores as objects: a tensor of a given shape and
dtype always splits the same way, so a chunk of the parent version pairs with the chunk of
the same index as its delta base, and a change to a few rows touches only their chunks.
Boundaries sit at fixed row offsets from the start of the tensor (multiples of a row count
that depends on the row size only), so appending rows (new token embeddings) leaves every
earlier chunk byte-identical, hence the same object, and only the last one grows.

Pieces are smaller (``PIECE_BYTES``) independent zstd units inside one object, so that
compressing or decompressing one large object keeps both cores busy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
PIECE_BYTES = 4 * 1024 * 1024


def row_chunks(
    shape: Sequence[int], itemsize: int, target_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` of dim 0, each at most ``target_bytes`` when possible.

    Every chunk but the last holds exactly ``target_bytes // row_bytes`` rows (at least one:
    a single row larger than the target is a chunk of its own), so the boundaries do not
    depend on the number of rows. 0-d tensors and tensors with no elements are one chunk;
    for a 0-d tensor that chunk is ``(0, 1)``, for an empty dim 0 it is ``(0, 0)``.
    """
    if target_bytes <= 0:
        raise ValueError("target_bytes must be positive")
    if len(shape) == 0:
        return [(0, 1)]
    rows = int(shape[0])
    row_bytes = math.prod(int(d) for d in shape[1:]) * itemsize
    if rows == 0 or row_bytes == 0:
        return [(0, rows)]
    rows_per_chunk = max(1, target_bytes // row_bytes)
    return [(a, min(a + rows_per_chunk, rows)) for a in range(0, rows, rows_per_chunk)]


def iter_pieces(
    nbytes: int, itemsize: int, piece_bytes: int = PIECE_BYTES
) -> Iterator[tuple[int, int]]:
    """Byte ranges covering ``[0, nbytes)`` of at most ``piece_bytes``, aligned to ``itemsize``.

    Every piece but the last is exactly ``piece_bytes`` long (``piece_bytes`` must be a
    multiple of ``itemsize``), which lets a decoder derive the piece boundaries from the
    object header alone. An empty buffer has no pieces.
    """
    if piece_bytes <= 0 or piece_bytes % itemsize:
        raise ValueError("piece_bytes must be a positive multiple of itemsize")
    if nbytes % itemsize:
        raise ValueError("nbytes must be a multiple of itemsize")
    for start in range(0, nbytes, piece_bytes):
        yield start, min(start + piece_bytes, nbytes)
