"""Which tied elements torch's CPU ``argsort(descending=True)`` ranks first, without torch.

mergekit 0.1.5's magnitude trim keeps the first k of ``torch.argsort(|w|, descending=True)``
on the CPU. That sort is unstable: torch sorts (value, index) pairs with libstdc++'s
``std::sort``, an introsort (median-of-three pivot moved to the front, Hoare partition,
recursion down to 16-element runs, a heapsort past depth 2·⌊log₂ n⌋, then one insertion
sort). The order it gives to equal keys depends only on how keys compare, so replaying the
same swaps on integer keys that order like |w| gives mergekit's choice among ties, exactly,
without importing torch (whose import alone costs about 1.8 s and 800 MiB per process).

The replay is vectorised and only follows what decides the tied value ``T``'s order:

- a Hoare partition of a segment pairs the i-th key (from the left) that may move right
  with the i-th key (from the right) that may move left, until the two scans cross, so one
  segment's partition is a handful of numpy passes;
- introsort keeps every element inside its segment and the final insertion sort is stable,
  so the ties end in the order they have when the partitions stop: a segment without ``T``
  never matters again, and a segment of nothing but ``T`` permutes in a way that depends
  only on its size (computed once per size).

Only the segments straddling the tie block's two ends are partitioned element by element,
so the work is a few passes over the tensor rather than a sort.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 16  # libstdc++ _S_threshold: runs this short are left to the insertion sort


def torch_kept_ties(keys: np.ndarray, value: int, take: int) -> np.ndarray:
    """Sorted flat indices of the ``take`` elements equal to ``value`` that torch's CPU
    ``argsort(descending=True)`` of ``keys`` places first among the equal ones.

    ``keys`` are integers ordered like the sorted floats (fp32 bits of |w|); NaN patterns
    must already be folded into one key, since torch treats all NaNs as equal.
    """
    n = keys.shape[0]
    a = np.array(keys, copy=True)
    idx = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    if n > 1:
        _introsort(a, idx, value, 2 * (n.bit_length() - 1))
    return np.sort(idx[a == value][:take])


def _introsort(a: np.ndarray, idx: np.ndarray, value: int, depth_limit: int) -> None:
    """Replay ``std::__introsort_loop`` on every segment that still holds ``value``."""
    pure = _PurePermutations()
    stack = [(0, a.shape[0], depth_limit)]
    while stack:
        lo, hi, depth = stack.pop()
        size = hi - lo
        if size <= THRESHOLD:
            continue
        equal = int(np.count_nonzero(a[lo:hi] == value))
        if equal == 0:
            continue  # holds no tie: where its elements go decides nothing
        if equal == size and pure.depth(size) <= depth:
            idx[lo:hi] = idx[lo:hi][pure.permutation(size)]
            continue
        if depth == 0:
            _heapsort(a, idx, lo, hi)
            continue
        cut = _partition(a, idx, lo, hi)
        stack.append((cut, hi, depth - 1))
        stack.append((lo, cut, depth - 1))


def _partition(a: np.ndarray, idx: np.ndarray, lo: int, hi: int) -> int:
    """``std::__unguarded_partition_pivot`` on ``[lo, hi)`` (keys descending); the cut."""
    mid = lo + (hi - lo) // 2
    _swap(a, idx, lo, _median_position(a, lo + 1, mid, hi - 1))
    pivot = a[lo]
    rest = a[lo + 1 : hi]
    stops_left = np.flatnonzero(rest <= pivot)  # where the left scan stops, in order
    stops_right = np.flatnonzero(rest >= pivot)[::-1]  # where the right scan stops
    common = min(stops_left.shape[0], stops_right.shape[0])
    swaps = int(np.count_nonzero(stops_left[:common] < stops_right[:common]))
    # The left scan stops at its next stop, or where the last swap left a stopping key.
    cut = int(stops_left[swaps]) if swaps < stops_left.shape[0] else rest.shape[0]
    if swaps:
        cut = min(cut, int(stops_right[swaps - 1]))
        left = stops_left[:swaps] + (lo + 1)
        right = stops_right[:swaps] + (lo + 1)
        for array in (a, idx):
            moved = array[left]
            array[left] = array[right]
            array[right] = moved
    return lo + 1 + cut


def _median_position(a: np.ndarray, x: int, y: int, z: int) -> int:
    """The position ``std::__move_median_to_first`` swaps to the front; "less" is ``>``."""
    ax, ay, az = a[x], a[y], a[z]
    if ax > ay:
        if ay > az:
            return y
        return z if ax > az else x
    if ax > az:
        return x
    return z if ay > az else y


def _swap(a: np.ndarray, idx: np.ndarray, i: int, j: int) -> None:
    a[i], a[j] = a[j], a[i]
    idx[i], idx[j] = idx[j], idx[i]


class _PurePermutations:
    """How introsort permutes a segment of equal keys: a function of its size alone.

    With every key equal, the median of three is the middle element, and the Hoare scans
    stop at every position, swapping the i-th after the pivot with the i-th from the end.
    """

    def __init__(self) -> None:
        self._perm: dict[int, np.ndarray] = {}
        self._depth: dict[int, int] = {}

    def _split(self, size: int) -> tuple[int, int]:
        swaps = (size - 1) // 2
        return swaps, swaps + 1  # the number of swapped pairs, and the cut

    def depth(self, size: int) -> int:
        """Partition levels the segment needs (it must not reach the heapsort limit)."""
        if size <= THRESHOLD:
            return 0
        if size not in self._depth:
            cut = self._split(size)[1]
            self._depth[size] = 1 + max(self.depth(cut), self.depth(size - cut))
        return self._depth[size]

    def permutation(self, size: int) -> np.ndarray:
        """``perm`` such that the sorted segment is ``segment[perm]``."""
        if size <= THRESHOLD:
            return np.arange(size, dtype=np.int64)
        if size not in self._perm:
            perm = np.arange(size, dtype=np.int64)
            perm[0], perm[size // 2] = perm[size // 2], perm[0]
            swaps, cut = self._split(size)
            left = np.arange(1, 1 + swaps)
            right = size - left
            perm[left], perm[right] = perm[right], perm[left].copy()
            perm[:cut] = perm[:cut][self.permutation(cut)]
            perm[cut:] = perm[cut:][self.permutation(size - cut)]
            self._perm[size] = perm
        return self._perm[size]


def _heapsort(a: np.ndarray, idx: np.ndarray, lo: int, hi: int) -> None:
    """``std::__partial_sort(first, last, last)``: make_heap then sort_heap, as libstdc++.

    Reached only past the depth limit (inputs built to defeat median-of-three), so it is
    a plain port, element by element.
    """
    keys = a[lo:hi].tolist()
    items = idx[lo:hi].tolist()
    heap = list(zip(keys, items, strict=True))
    n = len(heap)

    def adjust(hole: int, length: int, item: tuple[int, int]) -> None:
        top, child = hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if heap[child][0] > heap[child - 1][0]:  # comp(child, child - 1)
                child -= 1
            heap[hole] = heap[child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            heap[hole] = heap[child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and heap[parent][0] > item[0]:  # comp(parent, value)
            heap[hole] = heap[parent]
            hole = parent
            parent = (hole - 1) // 2
        heap[hole] = item

    for parent in range((n - 2) // 2, -1, -1):
        adjust(parent, n, heap[parent])
    for last in range(n - 1, 0, -1):
        item = heap[last]
        heap[last] = heap[0]
        adjust(0, last, item)
    a[lo:hi] = [k for k, _ in heap]
    idx[lo:hi] = [i for _, i in heap]
