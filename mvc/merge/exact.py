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

_HALF = 26  # fp64 fractions (52 bits) are split in two 26-bit halves
# Per-slice sums stay below 2**26 * 2**22 = 2**48 (fp64 halves) and 2**23 * 2**22 = 2**45
# (fp32 fractions), exact in the float64 weights np.bincount accumulates in.
_SLICE = 1 << 22
_F32_UNIT = 149  # an fp32 mantissa unit at exponent field 1 is 2**-149; fp64's is 2**-1074


class ExactSum:
    """Accumulates the exact sum of float32/float64 values (signed), on the host.

    Each value is binned by sign and exponent (the arithmetic shift of its bits gives both
    at once); a bin keeps the count of its values (each carries the implicit leading bit)
    and the sum of their fractions. Values of 32 bits or fewer are binned from their own
    fp32 bits, with no float64 copy: the total is exact either way, so the rounded result
    is the same as summing them as float64, only cheaper.
    """

    def __init__(self) -> None:
        # Rows: sign and exponent (negative values first); columns: count, fraction sums.
        self._bins64 = np.zeros((4096, 3), dtype=np.int64)
        self._bins32 = np.zeros((512, 2), dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        x = np.asarray(values).reshape(-1)
        if x.dtype.kind == "f" and x.dtype.itemsize <= 4:
            x = x.astype(np.float32, copy=False)
            for start in range(0, x.size, _SLICE):
                bits = x[start : start + _SLICE].view(np.int32)
                index = (bits >> 23) + 256  # sign and exponent: 0..511
                self._bins32[:, 0] += np.bincount(index, minlength=512)
                fraction = bits & 0x7FFFFF
                self._bins32[:, 1] += np.bincount(index, fraction, 512).astype(np.int64)
            return
        x = x.astype(np.float64, copy=False)
        for start in range(0, x.size, _SLICE):
            bits = x[start : start + _SLICE].view(np.int64)
            index = (bits >> 52) + 2048  # sign and exponent: 0..4095
            self._bins64[:, 0] += np.bincount(index, minlength=4096)
            fraction = bits & ((1 << 52) - 1)
            for column, half in ((1, fraction >> _HALF), (2, fraction & ((1 << _HALF) - 1))):
                self._bins64[:, column] += np.bincount(index, half, 4096).astype(np.int64)

    @staticmethod
    def _total(bins: np.ndarray, fraction_bits: int) -> int | None:
        """Σ ± mantissa sums << (max(e, 1) − 1) in Python integers (exact); None on inf/nan."""
        exponents = len(bins) // 2
        top = exponents - 1
        if bins[top, 0] or bins[exponents + top, 0]:
            return None
        total = 0
        for row in np.flatnonzero(bins[:, 0]).tolist():
            count, *fractions = bins[row].tolist()
            e = row % exponents
            mantissa = (count << fraction_bits) if e > 0 else 0
            if len(fractions) == 2:
                mantissa += (fractions[0] << _HALF) + fractions[1]
            else:
                mantissa += fractions[0]
            term = mantissa << max(e, 1) - 1
            total += term if row >= exponents else -term
        return total

    def value(self) -> float:
        """The exact sum rounded once to float64 (nan when an input is inf or nan)."""
        wide = self._total(self._bins64, 52)
        narrow = self._total(self._bins32, 23)
        if wide is None or narrow is None:
            return math.nan
        # Python's int / int true division rounds correctly, once.
        return (wide + (narrow << (1074 - _F32_UNIT))) / (1 << 1074)
