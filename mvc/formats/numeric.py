"""Raw tensor bytes as numbers, with numpy only (no torch on the fast paths).

numpy has no bf16 or fp8, so those are widened from their bit patterns: bf16 is the high
half of an fp32; the fp8 formats go through a 256-entry table built from their definitions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mvc.errors import FormatError


def to_float64(data: bytes | memoryview, dtype: str) -> np.ndarray:
    """The elements of a raw little-endian buffer as a flat float64 array."""
    if dtype == "BF16":
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return _fp8_table(dtype)[np.frombuffer(data, dtype=np.uint8)]
    numpy_name = _NUMPY.get(dtype)
    if numpy_name is None:
        raise FormatError(f"unknown dtype '{dtype}'")
    return np.frombuffer(data, dtype=numpy_name).astype(np.float64)


_NUMPY = {
    "BOOL": "u1",
    "U8": "u1",
    "I8": "i1",
    "U16": "<u2",
    "I16": "<i2",
    "F16": "<f2",
    "U32": "<u4",
    "I32": "<i4",
    "F32": "<f4",
    "U64": "<u8",
    "I64": "<i8",
    "F64": "<f8",
}


@lru_cache(maxsize=2)
def _fp8_table(dtype: str) -> np.ndarray:
    exponent_bits, bias = (4, 7) if dtype == "F8_E4M3" else (5, 15)
    mantissa_bits = 7 - exponent_bits
    table = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exponent = (code >> mantissa_bits) & ((1 << exponent_bits) - 1)
        mantissa = code & ((1 << mantissa_bits) - 1)
        top = (1 << exponent_bits) - 1
        if dtype == "F8_E4M3" and exponent == top and mantissa == (1 << mantissa_bits) - 1:
            value = float("nan")
        elif dtype == "F8_E5M2" and exponent == top:
            value = float("inf") if mantissa == 0 else float("nan")
        elif exponent == 0:
            value = mantissa / (1 << mantissa_bits) * 2.0 ** (1 - bias)
        else:
            value = (1 + mantissa / (1 << mantissa_bits)) * 2.0 ** (exponent - bias)
        table[code] = sign * value
    return table
