"""Object ids: one content, one id, whatever codec stored it.

The id covers dtype and shape as well as the bytes, so two tensors with the same bytes but
a different interpretation (an F32[4] and a U8[16]) never share an object. xxh3-128 runs at
memory speed; it is not collision-resistant against an adversary, which is acceptable for a
store whose writers are trusted and whose reads are all verified against the id anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from mvc.errors import NotFoundError

ID_HEX_LEN = 32
_HEX = frozenset("0123456789abcdef")


def object_id(dtype: str, shape: Sequence[int], data: bytes | bytearray | memoryview) -> str:
    """The 32-hex-char xxh3-128 of ``f"{dtype}{list(shape)}"`` followed by the raw bytes.

    The hasher is fed twice instead of hashing a concatenation, so a multi-GB buffer is
    never copied.
    """
    h = xxhash.xxh3_128()
    h.update(f"{dtype}{[int(d) for d in shape]}".encode())
    h.update(data)
    return h.hexdigest()


def is_object_id(oid: object) -> bool:
    """Whether ``oid`` is a well-formed id (32 lowercase hex chars)."""
    return isinstance(oid, str) and len(oid) == ID_HEX_LEN and _HEX.issuperset(oid)


def check_object_id(oid: object) -> str:
    """Return ``oid`` if well formed; a malformed id would otherwise become a path component."""
    if not is_object_id(oid):
        raise NotFoundError(f"no object {oid!r}: not a 32-hex-digit object id")
    return oid  # type: ignore[return-value]
