"""Which tied elements torch's CPU ``argsort(descending=True)`` ranks first, without torch.

mergekit 0.1.5's magnitude trim keeps the first k of ``torch.argsort(|w|, descending=True)``
on the CPU. That sort is unstable: torch sorts (value, index) pairs with libstdc++'s
``std::sort``, an introsort (median-of-three pivot moved to the front, Hoare partition,
recursion down to 16-element runs, a heapsort past depth 2·⌊log₂ n⌋, then one insertion
sort). The order it gives to equal keys depends only on how keys compare, so replaying the
same swaps on integer keys that order like |w| gives mergekit's choice among ties, exactly,
without importing torch (whose import costs seconds and a few hundred MiB per process).
Checked against torch 2.13.0+cpu's argsort and libstdc++'s partial_sort
(``tests/test_merge_torch_ties.py``).

The replay is vectorised and follows only what decides the kept set:

- a Hoare partition of a segment pairs the i-th key (from the left) that may move right
  with the i-th key (from the right) that may move left, until the two scans cross, so one
  segment's partition is a handful of numpy passes;
- introsort keeps every element inside its segment, and the final insertion sort is
  stable, so of a segment that ends wholly inside the first k positions every element is
  kept, and of one wholly after them none is, whatever happens inside it later. Only the
  one segment holding the boundary between positions k - 1 and k is partitioned further.

That is one chain of segments, about two passes' worth of partitioning over the tensor
(rather than a sort), and at the end the kept ties are the first ``take`` of them in the
order they then stand.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 16  # libstdc++ _S_threshold: runs this short are left to the insertion sort


def torch_kept_ties(
    keys: np.ndarray, value: int, take: int, *, overwrite: bool = False
) -> np.ndarray:
    """Sorted flat indices of the ``take`` elements equal to ``value`` that torch's CPU
    ``argsort(descending=True)`` of ``keys`` places first among the equal ones.

    ``keys`` are integers ordered like the sorted floats (fp32 bits of |w|); NaN patterns
    must already be folded into one key, since torch treats all NaNs as equal. With
    ``overwrite`` the replay reorders ``keys`` itself instead of a copy (a tensor's worth of
    memory saved when the caller has no further use for them).
    """
    n = keys.shape[0]
    a = keys if overwrite else np.array(keys, copy=True)
    idx = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    boundary = int(np.count_nonzero(a > value)) + take  # positions [0, boundary) are kept
    lo, hi, depth = 0, n, 2 * (n.bit_length() - 1) if n > 1 else 0
    while hi - lo > THRESHOLD and lo < boundary < hi:
        if depth == 0:
            _heapsort(a, idx, lo, hi)
            break
        depth -= 1
        cut = _partition(a, idx, lo, hi)
        lo, hi = (lo, cut) if boundary < cut else (cut, hi)
    # The first `take` ties in position order: all of those before the last segment, then
    # its own in order (the insertion sort is stable; a heapsorted segment is final).
    return np.sort(idx[a == value][:take])


def _partition(a: np.ndarray, idx: np.ndarray, lo: int, hi: int) -> int:
    """``std::__unguarded_partition_pivot`` on ``[lo, hi)`` (keys descending); the cut."""
    mid = lo + (hi - lo) // 2
    _swap(a, idx, lo, _median_position(a, lo + 1, mid, hi - 1))
    pivot = a[lo]
    keys, items = a[lo + 1 : hi], idx[lo + 1 : hi]  # views: positions below are relative
    stops_left = _positions(keys, lambda block: block <= pivot)  # where the left scan stops
    stops_right = _positions(keys, lambda block: block >= pivot)[::-1]  # the right scan
    # Pair i swaps while stops_left[i] < stops_right[i]: a prefix, found by bisection.
    low, high = 0, min(stops_left.shape[0], stops_right.shape[0])
    while low < high:
        middle = (low + high) // 2
        if stops_left[middle] < stops_right[middle]:
            low = middle + 1
        else:
            high = middle
    swaps = low
    # The left scan stops at its next stop, or where the last swap left a stopping key.
    cut = int(stops_left[swaps]) if swaps < stops_left.shape[0] else keys.shape[0]
    if swaps:
        cut = min(cut, int(stops_right[swaps - 1]))
        left, right = stops_left[:swaps], stops_right[:swaps]
        for array in (keys, items):
            moved = array[left]
            array[left] = array[right]
            array[right] = moved
    return lo + 1 + cut


BLOCK = 1 << 20  # positions are found a block at a time, as int32, to bound the temporaries


def _positions(keys: np.ndarray, test) -> np.ndarray:
    """Ascending positions where ``test`` holds (int32 when they fit, as they do below 2³¹)."""
    kind = np.int32 if keys.shape[0] < 2**31 else np.int64
    parts = [
        np.flatnonzero(test(keys[start : start + BLOCK])).astype(kind) + start
        for start in range(0, keys.shape[0], BLOCK)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=kind)


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
