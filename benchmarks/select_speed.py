"""Issue 15: the cost of exact rank selection and of mergekit's tie order, on one tensor.

One 2048 x 5632 MLP matrix (TinyLlama's shape) of |τ| from two bf16 "checkpoints", density
0.2, in two flavours: a realistic fine-tune (Gaussian steps, few ties at the k-th value)
and massive ties (steps of -3..3 ulps, so |τ| takes four values). In-process, best of
three, one thread:

- ``RankQuery``: mvc's selection on keys in memory (strided sample, bracket, gather);
- ``bincount``: the counting alternative (a 2^15-bin histogram of the high 16 bits, then
  one of the low 16 bits inside the boundary bucket), exact too;
- ``torch argsort``: what mergekit 0.1.5 runs per tensor (and mvc ran before, for ties);
- ``replay``: :func:`mvc.merge.introsort.torch_kept_ties`, the same kept set without torch.

Run: ``.venv/bin/python -m benchmarks.select_speed``.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.measure import print_table
from mvc.merge.arrays import NumpyOps
from mvc.merge.introsort import torch_kept_ties
from mvc.merge.select import RankQuery

ROWS, COLS, DENSITY = 2048, 5632, 0.2


def bf16(x: np.ndarray) -> np.ndarray:
    """Round fp32 to bf16 values (kept as fp32), to nearest even."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + ((bits >> 16) & 1) + 0x7FFF) & 0xFFFF0000).view(np.float32)


def magnitudes(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = ROWS * COLS
    if kind == "massive ties":
        base = np.sign(rng.standard_normal(n)) * (1 + rng.integers(0, 128, n) / 128)
        tuned = base + rng.integers(-3, 4, n) / 128
    else:
        base = bf16(rng.standard_normal(n, dtype=np.float32) * 0.02)
        tuned = bf16(base + rng.standard_normal(n, dtype=np.float32) * 1e-3)
    return np.abs(tuned.astype(np.float32) - base.astype(np.float32))


def counting(keys: np.ndarray, q: int) -> tuple[int, int, int]:
    """The key at descending position q by two histograms; (value, greater, equal)."""
    high = keys >> 16
    hist = np.bincount(high, minlength=1 << 15)
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, q, side="right"))
    bucket = (1 << 15) - 1 - j
    above = int(from_top[j]) - int(hist[bucket])
    low = np.bincount(keys[high == bucket] & 0xFFFF, minlength=1 << 16)
    low_top = np.cumsum(low[::-1])
    j = int(np.searchsorted(low_top, q - above, side="right"))
    digit = (1 << 16) - 1 - j
    return (bucket << 16) | digit, above + int(low_top[j]) - int(low[digit]), int(low[digit])


def best(fn, repeat: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def time_kind(kind: str) -> list[str]:
    """One row: the tie counts and each method's best time in ms."""
    import torch

    mags = magnitudes(kind)
    keys = mags.view(np.int32)
    n = keys.shape[0]
    k = max(1, int(DENSITY * n))

    def rank_query() -> tuple[int, int, int]:
        query = RankQuery(k - 1, 32, n)
        query.update(NumpyOps(), keys, True)
        return query.value, query.n_greater, query.n_equal

    t_rank, answer = best(rank_query)
    t_count, counted = best(lambda: counting(keys, k - 1))
    assert counted == answer
    value, greater, equal = answer
    tensor = torch.from_numpy(mags)
    t_torch, order = best(lambda: torch.argsort(tensor, descending=True).numpy())
    t_replay, kept = best(lambda: torch_kept_ties(keys, value, k - greater))
    assert np.array_equal(kept, np.sort(order[greater:k]))
    times = [f"{t * 1000:.0f}" for t in (t_rank, t_count, t_torch, t_replay)]
    return [kind, f"{equal:,}", f"{k - greater:,}", *times]


def main() -> int:
    import torch

    torch.set_num_threads(1)
    print_table(
        f"Rank selection on one {ROWS} x {COLS} tensor, density {DENSITY} (ms, best of 3)",
        ["|τ|", "ties at k-th", "ties kept", "RankQuery", "bincount", "torch argsort", "replay"],
        [time_kind(kind) for kind in ("fine-tune", "massive ties")],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
