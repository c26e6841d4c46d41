"""Exact sums of floats, so statistics are identical whatever the chunk size.

A float sum depends on the order of additions; a norm computed over chunks of 1 row would
differ in the last bits from one over the whole tensor, and DARE's rescale or SLERP's angle
would follow. Here each value is split into exponent and integer mantissa, mantissas are
summed per exponent in int64 (exact), and the total is formed once in Python integers and
rounded to float64 once: the correctly rounded sum, independent of chunking and order.
"""

from __future__ import annotations

import math

import torch

_HALF = 26  # fp64 mantissas (53 bits) are split in two so int64 bins cannot overflow


class ExactSum:
    """Accumulates the exact sum of float32/float64 values (signed)."""

    def __init__(self) -> None:
        self._pos = torch.zeros(2048, 2, dtype=torch.int64)
        self._neg = torch.zeros(2048, 2, dtype=torch.int64)

    def add(self, values: torch.Tensor) -> None:
        x = values.detach().reshape(-1).to(torch.float64)
        self._accumulate(self._pos, x.clamp(min=0))
        self._accumulate(self._neg, (-x).clamp(min=0))

    @staticmethod
    def _accumulate(bins: torch.Tensor, x: torch.Tensor) -> None:
        bits = x.view(torch.int64) & ((1 << 63) - 1)  # clamp can leave -0.0
        exponent = bits >> 52
        mantissa = (bits & ((1 << 52) - 1)) | ((exponent > 0).to(torch.int64) << 52)
        parts = torch.stack([mantissa >> _HALF, mantissa & ((1 << _HALF) - 1)], dim=1)
        bins.index_add_(0, exponent.cpu(), parts.cpu())

    @staticmethod
    def _total(bins: torch.Tensor) -> int:
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
