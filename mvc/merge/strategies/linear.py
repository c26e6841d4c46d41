"""Linear: Σ_i w_i·θ_i / Σ_i w_i over the branches' weights (the base is not used).

As mergekit computes it: accumulate w_i·θ_i in order with a fused multiply-add, then divide.
"""

from __future__ import annotations

from typing import Any

import torch

from mvc.errors import MvcError
from mvc.merge.params import MergeParams
from mvc.merge.strategies.base import (
    Chunk,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
    resolved_normalize,
)


class LinearJob(TensorJob):
    def step(self, chunk: Chunk) -> Step:
        thetas = chunk.thetas_c
        result = torch.zeros_like(thetas[0])
        weights = torch.tensor(self.weights, dtype=result.dtype, device=result.device)
        for theta, w in zip(thetas, weights, strict=True):
            result.addcmul_(theta, w)
        if resolved_normalize(self.params, True):
            result = result / weights.sum()
        return Step(out=result)


class Linear(Strategy):
    name = "linear"
    presets = (None, "mergekit")
    needs_base = False

    def check(self, params: MergeParams, n_branches: int) -> None:
        super().check(params, n_branches)
        if resolved_normalize(params, True) and sum(params.weights_for(n_branches)) == 0:
            raise MvcError("weights sum to zero; linear cannot normalise them")

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return LinearJob(params, spec, masks=masks)
