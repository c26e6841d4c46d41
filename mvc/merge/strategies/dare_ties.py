"""DARE then TIES' sign election and disjoint mean (no magnitude trim).

mergekit's ``dare_ties`` does not normalise by default (the agreeing deltas are summed);
the default preset follows the design's table and takes the weighted mean like ``ties``.
"""

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
from mvc.merge.strategies.ties import apply_lambda, elect_and_merge

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


class DareTiesJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.drop = DareDrop(params, spec)
        self.normalize = resolved_normalize(params, params.preset != "mergekit")

    def plan(self) -> Iterator:
        yield from self.drop.passes()

    def step(self, chunk: Chunk) -> Step:
        hats = self.drop.apply(chunk)
        election = elect_and_merge(
            chunk.ops, hats, self.weights, preset=self.params.preset, normalize=self.normalize
        )
        return Step(
            out=apply_lambda(chunk.base_c, election.delta, self.params.lambda_),
            kept=tuple(h != 0 for h in hats),
            contributed=election.agree,
            signs=hats,
        )


class DareTies(Strategy):
    name = "dare_ties"
    summary = "DARE's random drop and rescale, then TIES' sign election and mean."
    formula = (
        "τ̂_i = τ_i ⊙ Bernoulli(density) / density; s = sign Σ w_i·τ̂_i; "
        "θ = θ_base + λ·Σ_{sign τ̂_i = s} w_i·τ̂_i / Σ_{sign τ̂_i = s} w_i"
    )
    parameters = (DENSITY, WEIGHT, LAMBDA, SEED, NORMALIZE, LINES)
    presets = (None, "mergekit", "peft")
    mergekit = "dare_ties"

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return DareTiesJob(params, spec, masks)
