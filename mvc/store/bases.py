"""Delta bases: which stored object may serve as another's base, and the bytes a delta is
applied to.

A base is the same tensor (or chunk) in a parent version: the same dtype and shape, or its
first rows when rows were appended (a grown vocabulary); a shorter base is zero-padded to
the new size before the delta applies.
"""

from __future__ import annotations

from collections.abc import Sequence


def known_bytes(oid: str, data: bytes | memoryview, raw_size: int) -> memoryview:
    """``data`` as the bytes of ``oid``, which a delta of ``raw_size`` bytes is applied to.

    A wrong size is the caller's mistake (``known`` holds another object's bytes), not
    damage in the store, so it is a ``ValueError`` rather than a corrupt delta.
    """
    view = memoryview(data).cast("B")
    if view.nbytes != raw_size:
        raise ValueError(f"known bytes of {oid} are {view.nbytes} bytes, not {raw_size}")
    return view


def grows_from(base_shape: Sequence[int], shape: Sequence[int]) -> bool:
    """True when a tensor of ``base_shape`` is the first rows of one of ``shape``."""
    base_shape, shape = tuple(base_shape), tuple(shape)
    if base_shape == shape:
        return True
    return (
        len(base_shape) == len(shape) >= 1
        and base_shape[1:] == shape[1:]
        and base_shape[0] <= shape[0]
    )


def padded(data: bytes | memoryview, size: int) -> memoryview:
    """``data`` zero-padded to ``size`` bytes (a copy only when it is shorter)."""
    view = memoryview(data).cast("B")
    if view.nbytes == size:
        return view
    out = bytearray(size)
    out[: view.nbytes] = view
    return memoryview(out)
