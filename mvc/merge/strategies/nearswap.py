"""NearSwap: take theirs where the two sides are close, keep ours where they differ a lot.

With a = θ_ours, b = θ_theirs and the ``distance`` t: w = clamp(t / max(|a − b|, 1e-6),
0, 1) and θ = w·b + (1 − w)·a, elementwise (mergekit 0.1.5's ``nearswap``, where a is its
base model). The merge base is not used. A useful t is small: the default is 1e-4.
"""

from __future__ import annotations

from mvc.merge.declare import Param
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob

DISTANCE = Param(
    "distance",
    float,
    1e-4,
    "NearSwap: |ours − theirs| up to which theirs is taken whole (mergekit's t).",
    mergekit="t",
    low=0.0,
)


class NearSwapJob(TensorJob):
    def step(self, chunk: Chunk) -> Step:
        ops = chunk.ops
        a, b = chunk.thetas_c
        distance = ops.maximum(abs(a - b), 1e-6)
        # t / x is reciprocal(x)·t in torch: the same here
        w = (1 / distance) * self.params.distance
        w = ops.where(w > 1, ops.zeros_like(w, w.dtype) + 1, w)
        return Step(out=w * b + (1 - w) * a)


class NearSwap(Strategy):
    name = "nearswap"
    summary = "Take theirs where it is within a distance of ours, blend toward ours beyond."
    formula = "w = clamp(distance / |θ_1 − θ_2|, 0, 1); θ = w·θ_2 + (1 − w)·θ_1"
    parameters = (DISTANCE,)
    presets = (None, "mergekit")
    mergekit = "nearswap"
    mergekit_base = "first"
    needs_base = False
    min_branches = 2
    max_branches = 2
    job = NearSwapJob
