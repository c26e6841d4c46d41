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
# Per-slice sums of halves stay below 2**27 * 2**22 = 2**49, exact in the float64 weights
# np.bincount accumulates in.
_SLICE = 1 << 22


class ExactSum:
    """Accumulates the exact sum of float32/float64 values (signed), on the host."""

    def __init__(self) -> None:
        self._pos = np.zeros((2048, 2), dtype=np.int64)
        self._neg = np.zeros((2048, 2), dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        x = np.asarray(values).reshape(-1).astype(np.float64, copy=False)
        for start in range(0, x.size, _SLICE):
            part = x[start : start + _SLICE]
            self._accumulate(self._pos, np.maximum(part, 0.0))
            self._accumulate(self._neg, np.maximum(-part, 0.0))

    @staticmethod
    def _accumulate(bins: np.ndarray, x: np.ndarray) -> None:
        bits = x.view(np.int64) & ((1 << 63) - 1)  # the maximum can leave -0.0
        exponent = bits >> 52
        mantissa = (bits & ((1 << 52) - 1)) | ((exponent > 0).astype(np.int64) << 52)
        for column, half in enumerate((mantissa >> _HALF, mantissa & ((1 << _HALF) - 1))):
            sums = np.bincount(exponent, weights=half, minlength=2048)
            bins[:, column] += sums.astype(np.int64)

    @staticmethod
    def _total(bins: np.ndarray) -> int:
        if bool((bins[2047] != 0).any()):
            raise OverflowError("inf or nan in an exact sum")
        total = 0
        for e, (hi, lo) in enumerate(bins.tolist()):
            if hi or lo:
                total += ((hi << _HALF) + lo) << max(e, 1) - 1
        return total

    def value(self) -> float:
        """The exact sum rounded once to float64 (nan when an input is inf or nan)."""
        try:
            total = self._total(self._pos) - self._total(self._neg)
        except OverflowError:
            return math.nan
        # Python's int / int true division rounds correctly, once.
        return total / (1 << 1074)
