"""The safetensors dtype table.

mvc works on raw little-endian bytes so that fast commands never need torch. numpy lacks
bf16 and fp8, so those dtypes have no numpy equivalent here; code that needs to look at
their values works on the bit patterns through ``DType.uint`` instead.

numpy is imported only when a numpy dtype is asked for: the table itself (names, widths)
is all that commands moving stored bytes (push, clone's negotiation) need, and they should
not pay numpy's import at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from mvc.errors import FormatError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class DType:
    """One safetensors dtype: its name in headers, width and numpy view (if numpy has one)."""

    name: str
    itemsize: int
    kind: str
    numpy_code: str | None  # numpy's type string, None where numpy has no such dtype

    @cached_property
    def numpy(self) -> np.dtype | None:
        """The numpy dtype viewing these bytes as values, or None (bf16, fp8)."""
        import numpy as np

        return None if self.numpy_code is None else np.dtype(self.numpy_code)

    @cached_property
    def uint(self) -> np.dtype:
        """The unsigned integer dtype of the same width, for bit-pattern work (deltas, XOR)."""
        import numpy as np

        return np.dtype(f"<u{self.itemsize}")


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("BOOL", 1, "bool", "?"),
        DType("U8", 1, "uint", "u1"),
        DType("I8", 1, "int", "i1"),
        DType("U16", 2, "uint", "<u2"),
        DType("I16", 2, "int", "<i2"),
        DType("F16", 2, "float", "<f2"),
        DType("BF16", 2, "float", None),
        DType("U32", 4, "uint", "<u4"),
        DType("I32", 4, "int", "<i4"),
        DType("F32", 4, "float", "<f4"),
        DType("U64", 8, "uint", "<u8"),
        DType("I64", 8, "int", "<i8"),
        DType("F64", 8, "float", "<f8"),
        DType("F8_E4M3", 1, "float", None),
        DType("F8_E5M2", 1, "float", None),
    )
}


def get_dtype(name: str) -> DType:
    """Look up a dtype by its safetensors name; unknown names are a user-facing error."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise FormatError(f"unknown dtype {name!r}") from None
