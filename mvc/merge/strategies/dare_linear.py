"""DARE then task arithmetic: θ_base + λ·Σ_i w_i·τ̂_i (divided by Σ w_i with ``normalize``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE, SEED, WEIGHT
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import (
    Chunk,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
    resolved_normalize,
)
from mvc.merge.strategies.dare import DareDrop
from mvc.merge.strategies.task_arithmetic import weighted_sum
from mvc.merge.strategies.ties import apply_lambda

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


class DareLinearJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.drop = DareDrop(params, spec)

    def plan(self) -> Iterator:
        yield from self.drop.passes()

    def step(self, chunk: Chunk) -> Step:
        hats = self.drop.apply(chunk)
        delta = weighted_sum(hats, self.weights, resolved_normalize(self.params, False))
        return Step(
            out=apply_lambda(chunk.base_c, delta, self.params.lambda_),
            kept=tuple(h != 0 for h in hats),
            signs=hats,
        )


class DareLinear(Strategy):
    name = "dare_linear"
    summary = "DARE's random drop and rescale, then task arithmetic."
    formula = "τ̂_i = τ_i ⊙ Bernoulli(density) / density; θ = θ_base + λ·Σ w_i·τ̂_i"
    parameters = (DENSITY, WEIGHT, LAMBDA, SEED, NORMALIZE, LINES)
    presets = (None, "mergekit", "peft")
    mergekit = "dare_linear"

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return DareLinearJob(params, spec, masks)
