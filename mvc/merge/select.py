"""Exact order statistics of |τ| over a tensor that arrives in row chunks.

A magnitude trim must keep *exactly* k elements whatever the chunking, without ever
holding the tensor. Magnitudes of non-negative floats order like their bit patterns read as
integers, so an exact k-th largest is a radix select: one 65536-bin histogram per 16-bit
digit, each pass restricted to the prefix found so far (2 passes for fp32 keys, 4 for fp64).
When one chunk holds the whole tensor, ``kthvalue`` answers in that single pass.

Ties at the threshold are broken by flat index (lowest first), which needs the number of
threshold-valued elements before each chunk: one cheap extra counting pass, only when the
threshold value is split between kept and dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mvc.merge.arrays import Array, ArrayOps

DIGIT = 16
BINS = 1 << DIGIT
_NONE_VALUE = (1 << 63) - 1  # no key exceeds it: a cut that keeps nothing


def magnitude_keys(ops: ArrayOps, x: Array, *, as_fp32: bool = False) -> Array:
    """|x| as integer keys ordered like the magnitudes: fp32 bits as int32 (a free view of an
    fp32 |x|, half the bytes of int64), or fp64 bits as int64 for fp64."""
    a = abs(x)
    if a.dtype == ops.float64 and not as_fp32:
        return a.view(ops.int64)
    return ops.astype(a, ops.float32).view(ops.int32)


def key_bits(dtype: str, *, as_fp32: bool = False) -> int:
    return 64 if dtype == "F64" and not as_fp32 else 32


class RadixQuery:
    """The key at descending position ``q`` (0-based), plus how many keys exceed / equal it."""

    def __init__(self, q: int, bits: int) -> None:
        self.q = q
        self.rem = q
        self.prefix = 0
        self.first_shift = bits - DIGIT
        self.shift = self.first_shift
        self.hist: np.ndarray | None = None
        self.done = False
        self.value = 0
        self.n_greater = 0
        self.n_equal = 0

    def update(self, ops: ArrayOps, keys: Array, whole: bool) -> None:
        if self.done:
            return
        if whole and self.shift == self.first_shift:
            value = ops.kth_smallest(keys, keys.shape[0] - self.q)
            self.value = value
            self.n_greater = ops.count_nonzero(keys > value)
            self.n_equal = ops.count_nonzero(keys == value)
            self.done = True
            return
        if self.shift != self.first_shift:
            keys = keys[(keys >> (self.shift + DIGIT)) == self.prefix]
        digits = (keys >> self.shift) & (BINS - 1)
        counts = ops.bincount(digits, minlength=BINS)
        self.hist = counts if self.hist is None else self.hist + counts

    def end_pass(self) -> None:
        if self.done:
            return
        hist = self.hist if self.hist is not None else np.zeros(BINS, dtype=np.int64)
        self.hist = None
        from_top = np.cumsum(hist[::-1])
        j = int(np.searchsorted(from_top, self.rem, side="right"))
        digit = BINS - 1 - j
        above = int(from_top[j]) - int(hist[digit])
        self.rem -= above
        self.prefix = (self.prefix << DIGIT) | digit
        if self.shift == 0:
            self.done = True
            self.value = self.prefix
            self.n_equal = int(hist[digit])
            self.n_greater = self.q - self.rem
        else:
            self.shift -= DIGIT


@dataclass
class Cut:
    """A set of elements defined by rank: keys beyond ``value`` plus the first ``take`` equal ones.

    ``above`` selects keys > value (a top-k set), otherwise keys < value (a bottom-r set).
    ``offsets`` maps a chunk's first flat index to the count of equal keys before it; it is
    needed only when the equal keys are split (0 < take < n_equal).
    """

    above: bool
    value: int
    take: int = 0
    n_equal: int = 0
    offsets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def everything(cls) -> Cut:
        return cls(above=True, value=-1)

    @classmethod
    def nothing(cls) -> Cut:
        return cls(above=True, value=_NONE_VALUE)

    @property
    def split(self) -> bool:
        return 0 < self.take < self.n_equal

    def apply(self, ops: ArrayOps, keys: Array, flat_start: int) -> Array:
        if self.value == _NONE_VALUE:  # out of int32 range: comparing would wrap around
            return ops.zeros_like(keys, ops.bool_)
        if self.take == 0:
            return keys > self.value if self.above else keys < self.value
        if self.take >= self.n_equal:
            return keys >= self.value if self.above else keys <= self.value
        inside = keys > self.value if self.above else keys < self.value
        equal = keys == self.value
        rank = ops.cumsum(equal) - 1 + self.offsets[flat_start]
        return inside | (equal & (rank < self.take))


@dataclass(frozen=True)
class Request:
    """``count`` largest (``top``) or smallest magnitudes of branch ``branch``'s τ."""

    branch: int
    top: bool
    count: int


class KeyPass:
    """One pass over the chunks feeding every branch's magnitude keys to a callback."""

    def __init__(self, consume) -> None:
        self._consume = consume

    def update(self, chunk) -> None:
        keys = [magnitude_keys(chunk.ops, tau) for tau in chunk.taus()]
        self._consume(keys, chunk)


class Selection:
    """Runs rank requests over a tensor's chunks and turns them into exact :class:`Cut` s.

    Drive it with ``yield from selection.passes()`` inside a job's plan; afterwards
    ``cuts[i]`` is the cut for ``requests[i]``.
    """

    def __init__(self, requests: list[Request], numel: int, dtype: str) -> None:
        self.requests = requests
        self.numel = numel
        self.bits = key_bits(dtype)
        self.cuts: list[Cut] = []

    def passes(self) -> Iterator[KeyPass]:
        n = self.numel
        queries: dict[int, RadixQuery] = {}
        for i, req in enumerate(self.requests):
            if 0 < req.count < n:
                q = req.count - 1 if req.top else n - req.count
                queries[i] = RadixQuery(q, self.bits)

        def feed(keys, chunk):
            for i, query in queries.items():
                query.update(chunk.ops, keys[self.requests[i].branch], chunk.whole)

        while not all(query.done for query in queries.values()):
            yield KeyPass(feed)
            for query in queries.values():
                query.end_pass()

        cuts = []
        for i, req in enumerate(self.requests):
            if req.count <= 0:
                cuts.append(Cut.nothing())
            elif req.count >= n:
                cuts.append(Cut.everything())
            else:
                query = queries[i]
                beyond = query.n_greater if req.top else n - query.n_greater - query.n_equal
                cuts.append(
                    Cut(
                        above=req.top,
                        value=query.value,
                        take=req.count - beyond,
                        n_equal=query.n_equal,
                    )
                )
        split = [i for i, cut in enumerate(cuts) if cut.split]
        if split:
            counts: dict[int, list[int]] = {i: [] for i in split}
            starts: list[int] = []

            def count(keys, chunk):
                starts.append(chunk.flat_start)
                for i in split:
                    equal = keys[self.requests[i].branch] == cuts[i].value
                    counts[i].append(chunk.ops.count_nonzero(equal))

            yield KeyPass(count)
            order = sorted(range(len(starts)), key=starts.__getitem__)
            for i in split:
                running = 0
                for j in order:
                    cuts[i].offsets[starts[j]] = running
                    running += counts[i][j]
        self.cuts = cuts
