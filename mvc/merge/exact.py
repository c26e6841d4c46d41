"""Exact sums of floats, so statistics are identical whatever the chunk size.

A float sum depends on the order of additions; a norm computed over chunks of 1 row would
differ in the last bits from one over the whole tensor, and DARE's rescale or SLERP's angle
would follow. Here each value is split into exponent and integer mantissa, mantissas are
summed per exponent in int64 (exact), and the total is formed once in Python integers and
rounded to float64 once: the correctly rounded sum, independent of chunking and order.
"""

from __future__ import annotations

import math

import numpy as np

_HALF = 26  # fp64 mantissas (53 bits) are split in two 26/27-bit halves
# Per-slice sums stay below 2**27 * 2**22 = 2**49 (fp64 halves) and 2**24 * 2**22 = 2**46
# (fp32 mantissas), exact in the float64 weights np.bincount accumulates in.
_SLICE = 1 << 22
_F32_UNIT = 149  # an fp32 mantissa unit at exponent field 1 is 2**-149; fp64's is 2**-1074


class ExactSum:
    """Accumulates the exact sum of float32/float64 values (signed), on the host.

    Values of 32 bits or fewer are summed from their own fp32 bits (one signed bincount
    over 256 exponents, no float64 copy): the total is exact either way, so the rounded
    result is the same as summing them as float64, only cheaper.
    """

    def __init__(self) -> None:
        self._bins64 = np.zeros((2048, 2), dtype=np.int64)
        self._bins32 = np.zeros(256, dtype=np.int64)
        self._special = False  # an inf or nan was added

    def add(self, values: np.ndarray) -> None:
        x = np.asarray(values).reshape(-1)
        if x.dtype.kind == "f" and x.dtype.itemsize <= 4:
            x = x.astype(np.float32, copy=False)
            for start in range(0, x.size, _SLICE):
                self._accumulate32(x[start : start + _SLICE])
            return
        x = x.astype(np.float64, copy=False)
        for start in range(0, x.size, _SLICE):
            self._accumulate64(x[start : start + _SLICE])

    def _accumulate32(self, x: np.ndarray) -> None:
        bits = x.view(np.int32)
        exponent = (bits >> 23) & 0xFF
        if x.size and int(exponent.max()) == 0xFF:
            self._special = True
        mantissa = (bits & 0x7FFFFF) | ((exponent > 0).astype(np.int32) << 23)
        signed = np.where(bits < 0, -mantissa, mantissa)
        self._bins32 += np.bincount(exponent, weights=signed, minlength=256).astype(np.int64)

    def _accumulate64(self, x: np.ndarray) -> None:
        bits = x.view(np.int64)
        exponent = (bits >> 52) & 0x7FF
        if x.size and int(exponent.max()) == 0x7FF:
            self._special = True
        mantissa = (bits & ((1 << 52) - 1)) | ((exponent > 0).astype(np.int64) << 52)
        negative = bits < 0
        for column, half in enumerate((mantissa >> _HALF, mantissa & ((1 << _HALF) - 1))):
            signed = np.where(negative, -half, half)
            sums = np.bincount(exponent, weights=signed, minlength=2048)
            self._bins64[:, column] += sums.astype(np.int64)

    @staticmethod
    def _total(bins: np.ndarray) -> int:
        """Σ bin << (max(e, 1) − 1) over the nonzero bins, in Python integers (exact)."""
        total = 0
        rows = bins.reshape(bins.shape[0], -1)
        for e in np.flatnonzero(rows.any(axis=1)).tolist():
            parts = rows[e].tolist()
            mantissa = (parts[0] << _HALF) + parts[1] if len(parts) == 2 else parts[0]
            total += mantissa << max(e, 1) - 1
        return total

    def value(self) -> float:
        """The exact sum rounded once to float64 (nan when an input is inf or nan)."""
        if self._special:
            return math.nan
        total = self._total(self._bins64) + (self._total(self._bins32) << (1074 - _F32_UNIT))
        # Python's int / int true division rounds correctly, once.
        return total / (1 << 1074)
