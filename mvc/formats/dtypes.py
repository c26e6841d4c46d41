"""The safetensors dtype table.

mvc works on raw little-endian bytes so that fast commands never need torch. numpy lacks
bf16 and fp8, so those dtypes have no numpy equivalent here; code that needs to look at
their values works on the bit patterns through ``DType.uint`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvc.errors import FormatError


@dataclass(frozen=True)
class DType:
    """One safetensors dtype: its name in headers, width and numpy view (if numpy has one)."""

    name: str
    itemsize: int
    kind: str
    numpy: np.dtype | None

    @property
    def uint(self) -> np.dtype:
        """The unsigned integer dtype of the same width, for bit-pattern work (deltas, XOR)."""
        return np.dtype(f"<u{self.itemsize}")


def _dtype(name: str, itemsize: int, kind: str, numpy: str | None) -> DType:
    return DType(name, itemsize, kind, None if numpy is None else np.dtype(numpy))


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        _dtype("BOOL", 1, "bool", "?"),
        _dtype("U8", 1, "uint", "u1"),
        _dtype("I8", 1, "int", "i1"),
        _dtype("U16", 2, "uint", "<u2"),
        _dtype("I16", 2, "int", "<i2"),
        _dtype("F16", 2, "float", "<f2"),
        _dtype("BF16", 2, "float", None),
        _dtype("U32", 4, "uint", "<u4"),
        _dtype("I32", 4, "int", "<i4"),
        _dtype("F32", 4, "float", "<f4"),
        _dtype("U64", 8, "uint", "<u8"),
        _dtype("I64", 8, "int", "<i8"),
        _dtype("F64", 8, "float", "<f8"),
        _dtype("F8_E4M3", 1, "float", None),
        _dtype("F8_E5M2", 1, "float", None),
    )
}


def get_dtype(name: str) -> DType:
    """Look up a dtype by its safetensors name; unknown names are a user-facing error."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise FormatError(f"unknown dtype {name!r}") from None
