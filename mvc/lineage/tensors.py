"""Chunk-by-chunk tensor reading for lineage commands (torch, imported here lazily).

Lineage compares and rebuilds tensors one row chunk at a time, the same layout the store
and the merge executor use, so no command here holds more than a few chunks in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mvc.formats.torch_io import to_torch

if TYPE_CHECKING:
    import torch

    from mvc.repo.manifest import TensorEntry


class Readable(Protocol):
    def get(self, oid: str) -> bytes: ...


def chunk_shape(entry: TensorEntry, start: int, stop: int) -> tuple[int, ...]:
    return (stop - start, *entry.shape[1:]) if entry.shape else ()


def row_numel(entry: TensorEntry) -> int:
    return math.prod(entry.shape[1:]) if entry.shape else 1


def iter_rows(store: Readable, entry: TensorEntry) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start row, stop row, tensor) for each stored chunk, in the tensor's own dtype."""
    for chunk in entry.chunks:
        data = bytearray(store.get(chunk.oid))
        yield (
            chunk.start,
            chunk.stop,
            to_torch(data, entry.dtype, chunk_shape(entry, chunk.start, chunk.stop)),
        )


def _same_rows(a: TensorEntry, b: TensorEntry) -> bool:
    return [(c.start, c.stop) for c in a.chunks] == [(c.start, c.stop) for c in b.chunks]


def _whole(store: Readable, entry: TensorEntry) -> torch.Tensor:
    data = bytearray(b"".join(store.get(c.oid) for c in entry.chunks))
    return to_torch(data, entry.dtype, entry.shape)


def max_abs_difference(store: Readable, a: TensorEntry, b: TensorEntry) -> float:
    """max |a − b| in float64 over two entries of one dtype and shape (NaN when a NaN differs)."""
    import torch

    if _same_rows(a, b):
        pairs = zip(iter_rows(store, a), iter_rows(store, b), strict=True)
        parts = ((x[2], y[2]) for x, y in pairs)
    else:
        parts = iter([(_whole(store, a), _whole(store, b))])
    worst = 0.0
    for x, y in parts:
        diff = (x.to(torch.float64) - y.to(torch.float64)).abs()
        if diff.numel():
            worst = max(worst, float(diff.max()))
    return worst


def mask_slice(packed: bytes, flat_start: int, count: int) -> torch.Tensor:
    """Bits [flat_start, flat_start + count) of a packed TALL mask (LSB first) as bools."""
    import torch

    first = flat_start // 8
    last = (flat_start + count + 7) // 8
    window = np.frombuffer(packed, dtype=np.uint8)[first:last]
    bits = np.unpackbits(window, bitorder="little")
    offset = flat_start - first * 8
    return torch.from_numpy(bits[offset : offset + count].astype(bool))
