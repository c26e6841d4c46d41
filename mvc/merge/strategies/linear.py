"""Linear: Σ_i w_i·θ_i / Σ_i w_i over the branches' weights (the base is not used).

Accumulated in branch order (w_i·θ_i rounded, then added), then divided by Σ w_i.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mvc.errors import MvcError
from mvc.merge.declare import NORMALIZE, WEIGHT
from mvc.merge.strategies.base import (
    Chunk,
    Step,
    Strategy,
    TensorJob,
    resolved_normalize,
)
from mvc.merge.strategies.task_arithmetic import weighted_sum

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


class LinearJob(TensorJob):
    def step(self, chunk: Chunk) -> Step:
        result = weighted_sum(chunk.thetas_c, self.weights, normalize=False)
        if resolved_normalize(self.params, True):
            result = result / sum(self.weights)
        return Step(out=result)


class Linear(Strategy):
    name = "linear"
    summary = "Weighted average of the branches' weights (the base is not used)."
    formula = "θ = Σ w_i·θ_i / Σ w_i  (no division without normalize)"
    parameters = (WEIGHT, NORMALIZE)
    presets = (None, "mergekit")
    needs_base = False
    mergekit = "linear"
    mergekit_base = "none"

    def check(self, params: MergeParams, n_branches: int) -> None:
        super().check(params, n_branches)
        if resolved_normalize(params, True) and sum(params.weights_for(n_branches)) == 0:
            raise MvcError("weights sum to zero; linear cannot normalise them")

    job = LinearJob
