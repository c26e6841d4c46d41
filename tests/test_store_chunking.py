"""Row chunks and pieces: deterministic, covering, bounded."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvc.store.chunking import DEFAULT_CHUNK_BYTES, iter_pieces, row_chunks

shapes = st.lists(st.integers(0, 50), min_size=0, max_size=4)


@given(shapes, st.sampled_from([1, 2, 4, 8]), st.integers(1, 5000))
def test_row_chunks_cover_dim0_within_target(shape, itemsize, target):
    chunks = row_chunks(shape, itemsize, target)
    assert chunks == row_chunks(tuple(shape), itemsize, target)  # deterministic
    if not shape:
        assert chunks == [(0, 1)]
        return
    rows = shape[0]
    row_bytes = math.prod(shape[1:]) * itemsize
    if rows == 0 or row_bytes == 0:
        assert chunks == [(0, rows)]
        return
    assert chunks[0][0] == 0 and chunks[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    sizes = [b - a for a, b in chunks]
    per_chunk = max(1, target // row_bytes)
    assert all(size == per_chunk for size in sizes[:-1]) and 1 <= sizes[-1] <= per_chunk
    assert len(chunks) == -(-rows // per_chunk)


@given(shapes.filter(lambda s: len(s) >= 1), st.integers(0, 60), st.integers(1, 5000))
def test_appending_rows_keeps_every_earlier_boundary(shape, extra, target):
    """Boundaries are fixed row offsets: a grown tensor's chunks extend the old ones."""
    old = row_chunks(shape, 4, target)
    new = row_chunks([shape[0] + extra, *shape[1:]], 4, target)
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        return
    assert new[: len(old) - 1] == old[:-1]
    assert new[len(old) - 1][0] == old[-1][0] and new[len(old) - 1][1] >= old[-1][1]


def test_default_target_on_an_embedding():
    chunks = row_chunks((30522, 384), 4)
    assert chunks == [(0, 10922), (10922, 21844), (21844, 30522)]
    assert all((b - a) * 384 * 4 <= DEFAULT_CHUNK_BYTES for a, b in chunks)


@given(st.integers(0, 10_000), st.sampled_from([1, 2, 4, 8]), st.integers(1, 100))
def test_pieces_are_aligned_and_cover(n_items, itemsize, piece_items):
    nbytes, piece_bytes = n_items * itemsize, piece_items * itemsize
    pieces = list(iter_pieces(nbytes, itemsize, piece_bytes))
    assert sum(b - a for a, b in pieces) == nbytes
    assert all(b - a == piece_bytes for a, b in pieces[:-1])
    assert all(a % itemsize == 0 for a, _ in pieces)


def test_bad_arguments():
    with pytest.raises(ValueError):
        row_chunks((4,), 4, 0)
    with pytest.raises(ValueError):
        list(iter_pieces(8, 4, 6))
