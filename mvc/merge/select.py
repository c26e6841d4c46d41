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
threshold-valued elements before each chunk. The bracket pass counts the keys equal to its
bounds chunk by chunk, so when the threshold is a bound (always, under massive ties) those
counts come free; otherwise one cheap counting pass finds them. ``TORCH_ORDER`` instead
keeps the ties that mergekit 0.1.5 keeps (the first k of a descending, unstable
``torch.argsort`` of the whole tensor's |τ| on the CPU): that order depends on every
element, so the rank passes also gather the tensor's keys (4 bytes per element, as
mergekit holds the whole tensor) and :func:`mvc.merge.introsort.torch_kept_ties` replays
torch's sort on them, without importing torch. The permutation depends only on how keys
compare, so the int32 keys give the same order as mergekit's fp32 |τ|.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mvc.merge.arrays import Array, ArrayOps
from mvc.merge.introsort import torch_kept_ties

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

    Given each chunk's flat ``start``, the bracket pass also counts, chunk by chunk, the
    keys equal to its two bounds; when the answer is a bound, ``equal_counts`` maps each
    chunk's start to its count of keys equal to the answer (None otherwise).
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
        self._high_counts: dict[int, int] = {}
        self._low_counts: dict[int, int] = {}
        self.equal_counts: dict[int, int] | None = None

    @property
    def sampling(self) -> bool:
        """Whether the next pass only samples (any subset of the chunks will do)."""
        return self._phase == "sample"

    def update(self, ops: ArrayOps, keys: Array, whole: bool, start: int | None = None) -> None:
        if self.done:
            return
        if self._phase == "sample":
            if whole:  # one chunk holds everything: both passes over the same keys
                self._select_whole(ops, keys)
                self.equal_counts = {0 if start is None else start: self.n_equal}
                return
            self._sample.append(ops.to_numpy(keys[::SAMPLE_STRIDE]))
        elif self._phase == "bracket":
            at_high = ops.count_nonzero(keys == self._high)
            at_low = ops.count_nonzero(keys == self._low)
            self._above += ops.count_nonzero(keys > self._high)
            self._at_high += at_high
            self._at_low += at_low
            if start is not None:
                self._high_counts[start] = at_high
                self._low_counts[start] = at_low
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
            self.equal_counts = self._high_counts or None
        elif q < above + at_high + inside_count:
            inside = np.concatenate(inside_parts)
            k = inside.shape[0] - (q - above - at_high)  # 1-based rank from the bottom
            value = int(np.partition(inside, k - 1)[k - 1])
            greater = above + at_high + int(np.count_nonzero(inside > value))
            self._answer(value, greater, int(np.count_nonzero(inside == value)))
        elif q < above + at_high + inside_count + at_low:
            self._answer(self._low, above + at_high + inside_count, at_low)
            self.equal_counts = self._low_counts or None
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
    ``offsets`` maps a chunk's first flat index to the counts of equal keys before it and
    in it; it is needed only when the equal keys are split (0 < take < n_equal), and only
    the one chunk holding the last kept tie needs more than a comparison. ``chosen``, when
    set, replaces that rule: the sorted flat indices of the equal keys that are kept.
    """

    above: bool
    value: int
    take: int = 0
    n_equal: int = 0
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
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
        before, here = self.offsets[flat_start]
        if before >= self.take:  # every tie here comes after the kept ones
            return inside
        if before + here <= self.take:  # every tie here is kept
            return keys >= self.value if self.above else keys <= self.value
        equal = keys == self.value
        rank = ops.cumsum(equal) - 1 + before
        return inside | (equal & (rank < self.take))

    def set_counts(self, counts: dict[int, int]) -> None:
        """``offsets`` from each chunk's count of equal keys, keyed by its flat start."""
        running = 0
        for start in sorted(counts):
            self.offsets[start] = (running, counts[start])
            running += counts[start]


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
        queries: dict[int, RankQuery] = {}
        for i, req in enumerate(self.requests):
            if 0 < req.count < n:
                q = req.count - 1 if req.top else n - req.count
                queries[i] = RankQuery(q, self.bits, n)
        # Under TORCH_ORDER every full pass also keeps the keys: a split tie is then
        # resolved on them without a further pass over the tensor.
        gathered: dict[int, dict[int, np.ndarray]] = {i: {} for i in queries}
        gather = self.tie_order == TORCH_ORDER
        sampling = [False]

        def feed(keys, chunk):
            start = chunk.flat_start
            for i, query in queries.items():
                key = keys[self.requests[i].branch]
                query.update(chunk.ops, key, chunk.whole, start)
                if gather and (chunk.whole or not sampling[0]):
                    gathered[i][start] = chunk.ops.to_numpy(key)

        while not all(query.done for query in queries.values()):
            sampling[0] = all(q.sampling for q in queries.values() if not q.done)
            yield KeyPass(feed, sample=sampling[0], keys=self._keys)
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
        if gather:
            for i in split:
                if sum(part.shape[0] for part in gathered[i].values()) != n:
                    yield from self._gather(gathered, i)
                _keep_torch_ties(cuts[i], gathered[i])
            self.cuts = cuts
            return
        counts: dict[int, dict[int, int]] = {}
        for i in split:
            if queries[i].equal_counts is not None:
                cuts[i].set_counts(queries[i].equal_counts)
            else:
                counts[i] = {}
        if counts:  # the threshold was not a bracket bound: count the ties chunk by chunk

            def count(keys, chunk):
                for i in counts:
                    equal = keys[self.requests[i].branch] == cuts[i].value
                    counts[i][chunk.flat_start] = chunk.ops.count_nonzero(equal)

            yield KeyPass(count, keys=self._keys)
            for i, chunk_counts in counts.items():
                cuts[i].set_counts(chunk_counts)
        self.cuts = cuts

    def _gather(self, gathered: dict[int, dict[int, np.ndarray]], i: int) -> Iterator[KeyPass]:
        """One pass keeping request ``i``'s keys (when the rank passes did not see them all)."""
        gathered[i].clear()

        def keep(keys, chunk):
            gathered[i][chunk.flat_start] = chunk.ops.to_numpy(keys[self.requests[i].branch])

        yield KeyPass(keep, keys=self._keys)


# Every NaN pattern is one key, as torch's comparator treats all NaNs alike (and first).
_NAN_KEY = {np.dtype(np.int32): 0x7F800001, np.dtype(np.int64): 0x7FF0000000000001}


def _keep_torch_ties(cut: Cut, parts: dict[int, np.ndarray]) -> None:
    """Set ``cut.chosen`` to the ties torch's CPU argsort ranks first among the equal keys."""
    keys = np.concatenate([parts.pop(start) for start in sorted(parts)])
    keys = np.minimum(keys, _NAN_KEY[keys.dtype])
    value = min(cut.value, _NAN_KEY[keys.dtype])
    if not cut.above:  # ascending: the same sort on negated keys (NaN then sorts last)
        keys, value = np.negative(keys, out=keys), -value
    cut.chosen = torch_kept_ties(keys, value, cut.take)
