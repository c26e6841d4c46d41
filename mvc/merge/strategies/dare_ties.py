"""DARE then TIES' sign election and disjoint mean (no magnitude trim).

mergekit's ``dare_ties`` does not normalise by default (the agreeing deltas are summed);
the default preset follows the design's table and takes the weighted mean like ``ties``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mvc.merge.params import MergeParams
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
    presets = (None, "mergekit", "peft")

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return DareTiesJob(params, spec, masks)
