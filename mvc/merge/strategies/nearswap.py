"""NearSwap: take theirs where the two sides are close, keep ours where they differ a lot.

With a = θ_ours, b = θ_theirs and the distance threshold t: w = clamp(t / max(|a − b|, 1e-6),
0, 1) and θ = w·b + (1 − w)·a, elementwise (mergekit 0.1.5's ``nearswap``, where a is its
base model). The merge base is not used. A useful t is small, around 1e-4.
"""

from __future__ import annotations

from typing import Any

from mvc.merge.params import MergeParams
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob, TensorSpec


class NearSwapJob(TensorJob):
    def step(self, chunk: Chunk) -> Step:
        ops = chunk.ops
        a, b = chunk.thetas_c
        distance = ops.maximum(abs(a - b), 1e-6)
        w = (1 / distance) * self.params.t  # t / x is reciprocal(x)·t in torch: the same here
        w = ops.where(w > 1, ops.zeros_like(w, w.dtype) + 1, w)
        return Step(out=w * b + (1 - w) * a)


class NearSwap(Strategy):
    name = "nearswap"
    presets = (None, "mergekit")
    needs_base = False
    min_branches = 2
    max_branches = 2

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return NearSwapJob(params, spec, masks=masks)
