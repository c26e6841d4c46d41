"""Chunk-by-chunk tensor reading for lineage commands, on numpy (no torch).

Lineage compares and rebuilds tensors one row chunk at a time, the same layout the store
and the merge executor use, so no command here holds more than a few chunks in memory.
Arrays hold the stored values (bf16 as its bit patterns, as in ``mvc.merge.arrays``);
``as_float64`` widens them exactly for arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mvc.merge.arrays import NumpyOps

if TYPE_CHECKING:
    from mvc.repo.manifest import TensorEntry

_OPS = NumpyOps()


class Readable(Protocol):
    def get(self, oid: str) -> bytes: ...


def chunk_shape(entry: TensorEntry, start: int, stop: int) -> tuple[int, ...]:
    return (stop - start, *entry.shape[1:]) if entry.shape else ()


def row_numel(entry: TensorEntry) -> int:
    return math.prod(entry.shape[1:]) if entry.shape else 1


def load(data: bytes | memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of stored values over raw bytes (read-only, no copy)."""
    return _OPS.load(data, dtype, shape)


def as_float64(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values of a ``dtype`` tensor as float64, exactly (fp8 goes through torch)."""
    if dtype.startswith("F8"):
        import torch

        from mvc.formats.torch_io import to_torch

        return to_torch(x.tobytes(), dtype, x.shape).to(torch.float64).numpy()
    if dtype in ("BF16", "F16", "F32"):
        x = _OPS.compute(x, dtype)
    return x.astype(np.float64)


def iter_rows(store: Readable, entry: TensorEntry) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start row, stop row, stored values) for each stored chunk."""
    for chunk in entry.chunks:
        shape = chunk_shape(entry, chunk.start, chunk.stop)
        yield chunk.start, chunk.stop, load(store.get(chunk.oid), entry.dtype, shape)


def _same_rows(a: TensorEntry, b: TensorEntry) -> bool:
    return [(c.start, c.stop) for c in a.chunks] == [(c.start, c.stop) for c in b.chunks]


def _whole(store: Readable, entry: TensorEntry) -> np.ndarray:
    return load(b"".join(store.get(c.oid) for c in entry.chunks), entry.dtype, entry.shape)


def max_abs_difference(store: Readable, a: TensorEntry, b: TensorEntry) -> float:
    """max |a − b| in float64 over two entries of one dtype and shape (NaN when a NaN differs)."""
    if _same_rows(a, b):
        pairs = zip(iter_rows(store, a), iter_rows(store, b), strict=True)
        parts = ((x[2], y[2]) for x, y in pairs)
    else:
        parts = iter([(_whole(store, a), _whole(store, b))])
    worst = 0.0
    for x, y in parts:
        diff = np.abs(as_float64(x, a.dtype) - as_float64(y, b.dtype))
        if diff.size:
            largest = float(diff.max())
            if math.isnan(largest):
                return math.nan
            worst = max(worst, largest)
    return worst


def mask_slice(packed: bytes, flat_start: int, count: int) -> np.ndarray:
    """Bits [flat_start, flat_start + count) of a packed TALL mask (LSB first) as bools."""
    first = flat_start // 8
    last = (flat_start + count + 7) // 8
    window = np.frombuffer(packed, dtype=np.uint8)[first:last]
    bits = np.unpackbits(window, bitorder="little")
    offset = flat_start - first * 8
    return bits[offset : offset + count].astype(bool)
