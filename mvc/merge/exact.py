"""Exact sums of floats, so statistics are identical whatever the chunk size.

A float sum depends on the order of additions; a norm computed over chunks of 1 row would
differ in the last bits from one over the whole tensor, and DARE's rescale or SLERP's angle
would follow. Here every chunk is split, without error, into a few float64 vectors whose
plain sums are exact (Rump, Ogita and Oishi's error-free extraction), those sums are added
in Python integers, and the total is rounded to float64 once: the correctly rounded sum,
independent of chunking and order.
"""

from __future__ import annotations

import math

import numpy as np

_UNIT = 1074  # the smallest float64 step is 2**-1074: totals are kept in that unit
# σ = 2**k must stay finite (k ≤ 1023): chunks with values near float64's top are summed
# exactly by binning their bits instead.
_MAX_EXPONENT = 1023


def _exact_int(value: float) -> int:
    """``value`` (finite) as an exact integer multiple of 2**-1074."""
    numerator, denominator = value.as_integer_ratio()
    return numerator * ((1 << _UNIT) // denominator)


def _extract(x: np.ndarray) -> int | None:
    """Σ x exactly, in units of 2**-1074, destroying ``x`` (float64); None on inf/nan.

    Per level, with max|x| < 2**e and σ = 2**(e + ⌈log2(n + 1)⌉ + 1): q = (σ + x) − σ
    is exact (Sterbenz), a multiple of u = ulp(σ)/2, and |Σ q| < n·(m + u) < σ, so every
    partial sum of q is a multiple of u below 2**53·u: np.sum(q) is exact in any order.
    r = x − q is the rounding error of σ + x, representable, so it is exact too, and
    |r| ≤ u = 2**(e + L + 1 − 53) < 2**(e + L − 51): the next level's bound, 51 − L bits
    lower, with no scan. Levels go on until r is all zero (three or four for weights).
    """
    total = 0
    levels = math.ceil(math.log2(x.size + 1)) + 1
    top = max(float(x.max()), -float(x.min())) if x.size else 0.0
    if not math.isfinite(top):
        return None
    if top == 0.0:
        return total
    exponent = math.frexp(top)[1] + levels  # top < 2**frexp(top)[1]
    if exponent > _MAX_EXPONENT:
        return _binned(x)
    q = np.empty_like(x)
    while True:
        sigma = math.ldexp(1.0, exponent)
        np.add(x, sigma, out=q)
        np.subtract(q, sigma, out=q)
        total += _exact_int(float(q.sum()))
        np.subtract(x, q, out=x)
        left = np.count_nonzero(x)
        if not left:
            return total
        # Later levels see only the few values with bits left: drop the zeros once rare.
        if left < x.size // 4:
            x = x[x != 0]
            q = q[:left]
        exponent += levels - 52  # now |x| ≤ u = 2**(exponent − 53) < 2**(exponent − 52)


def _binned(x: np.ndarray) -> int:
    """Σ x exactly by binning each value's bits by sign and exponent (finite float64)."""
    bits = x.view(np.int64)
    index = (bits >> 52) + 2048  # sign and exponent: 0..4095
    total = 0
    for row in np.unique(index).tolist():
        fractions = (bits[index == row] & ((1 << 52) - 1)).tolist()
        e = row % 2048
        mantissa = sum(fractions) + ((len(fractions) << 52) if e > 0 else 0)
        term = mantissa << max(e, 1) - 1
        total += term if row >= 2048 else -term
    return total


class ExactSum:
    """Accumulates the exact sum of float32/float64 values (signed), on the host.

    Float32 and narrower values are widened to float64 first (exact). The running total is
    a Python integer in units of 2**-1074, so nothing is lost between chunks.
    """

    def __init__(self) -> None:
        self._total: int | None = 0

    def add(self, values: np.ndarray, *, scratch: bool = False) -> None:
        """Adds ``values``; ``scratch=True``: a temporary the sum may overwrite (no copy)."""
        x = np.asarray(values).reshape(-1)
        if self._total is None or x.size == 0:
            return
        # Extraction consumes its input: a private float64 copy unless the caller's is one.
        owned = scratch and x.dtype == np.float64 and x.flags.writeable and x.flags.c_contiguous
        x = x if owned else x.astype(np.float64, copy=True)
        part = _extract(x)
        self._total = None if part is None else self._total + part

    def value(self) -> float:
        """The exact sum rounded once to float64 (nan when an input is inf or nan)."""
        if self._total is None:
            return math.nan
        # Python's int / int true division rounds correctly, once.
        return self._total / (1 << _UNIT)
