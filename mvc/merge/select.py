"""Exact order statistics of |τ| over a tensor that arrives in row chunks.

A magnitude trim must keep *exactly* k elements whatever the chunking, without ever
holding the tensor. Magnitudes of non-negative floats order like their bit patterns read as
integers, so an exact k-th largest is a radix select: one 65536-bin histogram per 16-bit
digit, each pass restricted to the prefix found so far (2 passes for fp32 keys, 4 for fp64).
:class:`RankQuery` usually gets the same answer more cheaply, from a strided sample that
brackets the rank and a second pass that gathers the few keys inside the bracket, and falls
back to radix passes when the bracket misses. When one chunk holds the whole tensor,
``kthvalue`` answers in a single pass.

Ties at the threshold are broken by flat index (lowest first), which needs the number of
threshold-valued elements before each chunk: one cheap extra counting pass, only when the
threshold value is split between kept and dropped. ``TORCH_ORDER`` instead keeps the ties
that mergekit 0.1.5 keeps (the first k of a descending, unstable ``torch.argsort`` of the
whole tensor's |τ| on the CPU). That sort is a comparison sort whose tie order depends on
every element, so no streaming rule reproduces it: a gathering pass holds the tensor's keys
(4 bytes per element, as mergekit holds the whole tensor) and runs the same sort on them,
once per split tensor. The permutation depends only on how keys compare, so the int32 keys
give the same order as mergekit's fp32 |τ|.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mvc.merge.arrays import Array, ArrayOps

DIGIT = 16
SAMPLE_STRIDE = 64
MIN_SAMPLED = 256 * SAMPLE_STRIDE  # below this a whole tensor goes straight to kthvalue
BINS = 1 << DIGIT
_NONE_VALUE = (1 << 63) - 1  # no key exceeds it: a cut that keeps nothing
INDEX_ORDER = "index"  # ties kept lowest flat index first (chunk-invariant, mvc's default)
TORCH_ORDER = "torch"  # ties kept as torch's CPU argsort(descending=True) orders them


def magnitude_keys(ops: ArrayOps, magnitude: Array, *, as_fp32: bool = False) -> Array:
    """Magnitudes |x| as integer keys ordered like them: fp32 bits as int32 (a free view of
    an fp32 |x|, half the bytes of int64), or fp64 bits as int64 for fp64."""
    a = magnitude
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


class RankQuery:
    """The same answer as :class:`RadixQuery`, usually from two much cheaper passes.

    Pass 1 keeps every ``SAMPLE_STRIDE``-th key; the sample's order statistics bracket the
    wanted rank with a wide margin (many standard deviations of the sampling error). Pass 2
    counts the keys above the bracket and gathers the few inside it, and the exact answer
    is the right order statistic of those. Comparisons and a small gather replace the
    65536-bin histograms of a radix pass. When the bracket misses (a pathological or tiny
    sample), the query falls back to radix passes, so the result is always exact, and it
    never depends on where the chunks are cut.
    """

    def __init__(self, q: int, bits: int, numel: int) -> None:
        self.q = q
        self.bits = bits
        self.numel = numel  # keys in the whole tensor (a sample may come from a subset)
        self.done = False
        self.value = 0
        self.n_greater = 0
        self.n_equal = 0
        self._phase = "sample"
        self._sample: list[np.ndarray] = []
        self._low = self._high = 0
        self._gather_limit = 0
        self._above = self._at_high = self._at_low = 0
        self._inside: list[np.ndarray] = []
        self._inside_count = 0
        self._radix: RadixQuery | None = None

    @property
    def sampling(self) -> bool:
        """Whether the next pass only samples (any subset of the chunks will do)."""
        return self._phase == "sample"

    def update(self, ops: ArrayOps, keys: Array, whole: bool) -> None:
        if self.done:
            return
        if self._phase == "sample":
            if whole:  # one chunk holds everything: both passes over the same keys
                self._select_whole(ops, keys)
                return
            self._sample.append(ops.to_numpy(keys[::SAMPLE_STRIDE]))
        elif self._phase == "bracket":
            self._above += ops.count_nonzero(keys > self._high)
            self._at_high += ops.count_nonzero(keys == self._high)
            self._at_low += ops.count_nonzero(keys == self._low)
            if self._inside_count <= self._gather_limit:
                # Strictly inside: keys equal to a bound (often a mass of zeros) are counted.
                inside = keys[(keys > self._low) & (keys < self._high)]
                self._inside_count += inside.shape[0]
                self._inside.append(ops.to_numpy(inside))
        else:
            assert self._radix is not None
            self._radix.update(ops, keys, False)

    def _select_whole(self, ops: ArrayOps, keys: Array) -> None:
        if keys.shape[0] >= MIN_SAMPLED:
            self._sample.append(ops.to_numpy(keys[::SAMPLE_STRIDE]))
            self._plan_bracket()
            if self._phase == "bracket":
                self.update(ops, keys, False)
                self._resolve_bracket()
        if not self.done:  # small, or the bracket missed: kthvalue
            direct = RadixQuery(self.q, self.bits)
            direct.update(ops, keys, True)
            self._adopt(direct)

    def _adopt(self, radix: RadixQuery) -> None:
        self._answer(radix.value, radix.n_greater, radix.n_equal)

    def end_pass(self) -> None:
        if self.done:
            return
        if self._phase == "sample":
            self._plan_bracket()
        elif self._phase == "bracket":
            self._resolve_bracket()
        else:
            assert self._radix is not None
            self._radix.end_pass()
            if self._radix.done:
                self._adopt(self._radix)

    def _plan_bracket(self) -> None:
        sample = np.sort(np.concatenate(self._sample))[::-1] if self._sample else np.zeros(0)
        self._sample = []
        n = len(sample)
        if n == 0:
            self._start_radix()
            return
        # The wanted key's rank within the sample, and a margin of ~8 standard deviations.
        rank = self.q * n / self.numel
        margin = 8 * math.sqrt(max(rank * (1 - rank / n), 1.0)) + 2
        self._high = int(sample[max(0, math.floor(rank - margin))])
        self._low = int(sample[min(n - 1, math.ceil(rank + margin))])
        self._gather_limit = int(4 * (2 * margin + 2) * self.numel / n) + 1024
        self._phase = "bracket"

    def _resolve_bracket(self) -> None:
        """Descending, the keys are: > high, == high, inside, == low, < low."""
        q, above, at_high = self.q, self._above, self._at_high
        inside_count = 0 if self._low == self._high else self._inside_count
        at_low = 0 if self._low == self._high else self._at_low
        inside_parts, self._inside = self._inside, []
        if q < above or self._inside_count > self._gather_limit:
            self._start_radix()
        elif q < above + at_high:
            self._answer(self._high, above, at_high)
        elif q < above + at_high + inside_count:
            inside = np.concatenate(inside_parts)
            k = inside.shape[0] - (q - above - at_high)  # 1-based rank from the bottom
            value = int(np.partition(inside, k - 1)[k - 1])
            greater = above + at_high + int(np.count_nonzero(inside > value))
            self._answer(value, greater, int(np.count_nonzero(inside == value)))
        elif q < above + at_high + inside_count + at_low:
            self._answer(self._low, above + at_high + inside_count, at_low)
        else:
            self._start_radix()

    def _answer(self, value: int, n_greater: int, n_equal: int) -> None:
        self.value, self.n_greater, self.n_equal = value, n_greater, n_equal
        self.done = True

    def _start_radix(self) -> None:
        self._phase = "radix"
        self._radix = RadixQuery(self.q, self.bits)


@dataclass
class Cut:
    """A set of elements defined by rank: keys beyond ``value`` plus the first ``take`` equal ones.

    ``above`` selects keys > value (a top-k set), otherwise keys < value (a bottom-r set).
    ``offsets`` maps a chunk's first flat index to the count of equal keys before it; it is
    needed only when the equal keys are split (0 < take < n_equal). ``chosen``, when set,
    replaces that rule: the sorted flat indices of the equal keys that are kept.
    """

    above: bool
    value: int
    take: int = 0
    n_equal: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    chosen: np.ndarray | None = None

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
        if self.chosen is not None:
            lo, hi = np.searchsorted(self.chosen, [flat_start, flat_start + keys.shape[0]])
            inside[ops.from_numpy(self.chosen[lo:hi] - flat_start)] = True
            return inside
        equal = keys == self.value
        rank = ops.cumsum(equal) - 1 + self.offsets[flat_start]
        return inside | (equal & (rank < self.take))


@dataclass(frozen=True)
class Request:
    """``count`` largest (``top``) or smallest magnitudes of branch ``branch``'s τ."""

    branch: int
    top: bool
    count: int


def branch_magnitude_keys(chunk) -> list[Array]:
    """Each branch's |τ| as keys: what magnitude trims rank."""
    return [magnitude_keys(chunk.ops, m) for m in chunk.magnitudes()]


class KeyPass:
    """One pass over the chunks feeding every key array of a chunk to a callback."""

    def __init__(self, consume, sample: bool = False, keys=branch_magnitude_keys) -> None:
        self._consume = consume
        self.sample = sample
        self._keys = keys

    def update(self, chunk) -> None:
        self._consume(self._keys(chunk), chunk)


class Selection:
    """Runs rank requests over a tensor's chunks and turns them into exact :class:`Cut` s.

    Drive it with ``yield from selection.passes()`` inside a job's plan; afterwards
    ``cuts[i]`` is the cut for ``requests[i]``. ``keys`` maps a chunk to the key arrays a
    request's ``branch`` indexes (default: each branch's |τ|); any non-negative float
    statistic, viewed with :func:`magnitude_keys`, ranks the same way.
    """

    def __init__(
        self,
        requests: list[Request],
        numel: int,
        dtype: str,
        keys=branch_magnitude_keys,
        tie_order: str = INDEX_ORDER,
    ) -> None:
        self.requests = requests
        self.tie_order = tie_order
        self.numel = numel
        self.bits = key_bits(dtype)
        self.cuts: list[Cut] = []
        self._keys = keys

    def passes(self) -> Iterator[KeyPass]:
        n = self.numel
        queries: dict[int, RadixQuery] = {}
        for i, req in enumerate(self.requests):
            if 0 < req.count < n:
                q = req.count - 1 if req.top else n - req.count
                queries[i] = RankQuery(q, self.bits, n)

        def feed(keys, chunk):
            for i, query in queries.items():
                query.update(chunk.ops, keys[self.requests[i].branch], chunk.whole)

        while not all(query.done for query in queries.values()):
            sample = all(q.sampling for q in queries.values() if not q.done)
            yield KeyPass(feed, sample=sample, keys=self._keys)
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
        if split and self.tie_order == TORCH_ORDER:
            yield from self._torch_ties(cuts, split, queries)
        elif split:
            counts: dict[int, list[int]] = {i: [] for i in split}
            starts: list[int] = []

            def count(keys, chunk):
                starts.append(chunk.flat_start)
                for i in split:
                    equal = keys[self.requests[i].branch] == cuts[i].value
                    counts[i].append(chunk.ops.count_nonzero(equal))

            yield KeyPass(count, keys=self._keys)
            order = sorted(range(len(starts)), key=starts.__getitem__)
            for i in split:
                running = 0
                for j in order:
                    cuts[i].offsets[starts[j]] = running
                    running += counts[i][j]
        self.cuts = cuts

    def _torch_ties(self, cuts: list[Cut], split: list[int], queries) -> Iterator[KeyPass]:
        """Gather each split request's keys in flat order and keep the ties torch keeps."""
        parts: dict[int, dict[int, np.ndarray]] = {i: {} for i in split}

        def gather(keys, chunk):
            for i in split:
                key = chunk.ops.to_numpy(keys[self.requests[i].branch])
                parts[i][chunk.flat_start] = np.array(key, copy=True)

        yield KeyPass(gather, keys=self._keys)
        for i in split:
            cut, query = cuts[i], queries[i]
            whole = np.concatenate([parts[i].pop(start) for start in sorted(parts[i])])
            first = query.n_greater if cut.above else self.numel - query.n_greater - query.n_equal
            cut.chosen = np.sort(_torch_ranked(whole, cut.above)[first : first + cut.take])


def _torch_ranked(keys: np.ndarray, descending: bool) -> np.ndarray:
    """Flat indices of ``keys`` in the order of torch's default (unstable) CPU argsort."""
    import torch  # only here: a split tie under the mergekit preset

    tensor = torch.from_numpy(keys)
    return torch.argsort(tensor, descending=descending).numpy()
