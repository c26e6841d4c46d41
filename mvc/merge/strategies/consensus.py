"""Consensus merging (TALL masks): keep only elements that at least k branches "own".

τ_MTL = Σ_i w_i·τ_i (``on="sum"``) or the TIES merge of the τ_i (``on="ties"``, trimmed with
``density``); m_i = |τ_i| > λ_i·|τ_MTL − τ_i|; keep = Σ_i m_i ≥ k; θ = θ_base + α·τ_MTL ⊙ keep.
k defaults to 1 for two branches (k = 2 would drop every one-sided edit) and 2 otherwise.
The masks m_i are also what lineage stores for this strategy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mvc.merge.declare import DENSITY, NORMALIZE, TALL_LAMBDA, WEIGHT, Param
from mvc.merge.lines import LINES
from mvc.merge.masks import tall_mask
from mvc.merge.select import Request, Selection, magnitude_keys
from mvc.merge.strategies.base import (
    Chunk,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
    resolved_normalize,
)
from mvc.merge.strategies.task_arithmetic import sole_changes, weighted_sum
from mvc.merge.strategies.ties import apply_lambda, elect_and_merge, trim_count

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


K = Param(
    "k",
    int,
    None,
    "Consensus: keep elements in ≥ k masks (default 1 for two branches, else 2).",
    mergekit=None,
    low=0,
    optional=True,
)
ALPHA = Param("alpha", float, 1.0, "Consensus: scale of the kept multi-task vector.", mergekit=None)
ON = Param(
    "on",
    str,
    "sum",
    "Consensus: τ_MTL from the sum or from the TIES merge.",
    mergekit=None,
    choices=("sum", "ties"),
)


class ConsensusJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        n = spec.n_branches
        self.k = params.k_for(n)
        self.selection = None
        if params.on == "ties":
            self.selection = Selection(
                [
                    Request(i, True, trim_count(d, spec.numel, None))
                    for i, d in enumerate(params.densities_for(n))
                ],
                spec.numel,
                spec.dtype,
            )

    def plan(self) -> Iterator:
        if self.selection is not None:
            yield from self.selection.passes()

    def step(self, chunk: Chunk) -> Step:
        ops, taus = chunk.ops, chunk.taus()
        alpha = self.params.alpha
        if self.selection is None:
            mtl = weighted_sum(taus, self.weights, normalize=False)
            sole = sole_changes(ops, taus, self.weights)
        else:
            hats = tuple(
                tau * cut.apply(ops, magnitude_keys(ops, mag), chunk.flat_start)
                for tau, mag, cut in zip(taus, chunk.magnitudes(), self.selection.cuts, strict=True)
            )
            election = elect_and_merge(
                ops,
                hats,
                self.weights,
                preset=None,
                normalize=resolved_normalize(self.params, True),
            )
            mtl, sole = election.delta, election.sole
        owned = [
            tall_mask(tau, mag, mtl, lam)
            for tau, mag, lam in zip(taus, chunk.magnitudes(), self._lambdas, strict=True)
        ]
        votes = ops.zeros_like(mtl, ops.int32)
        for m in owned:
            votes += m
        keep = votes >= self.k
        exact = alpha == 1 and sole is not None
        return Step(
            out=apply_lambda(chunk.base_c, mtl * keep, alpha),
            kept=tuple(owned),
            contributed=tuple(m & keep & (tau != 0) for m, tau in zip(owned, taus, strict=True)),
            sole=tuple(s & keep for s in sole) if exact else None,
            mtl=mtl,
        )


class Consensus(Strategy):
    name = "consensus"
    summary = "Keep only the elements at least k branches own (TALL masks)."
    formula = (
        "τ_MTL = Σ w_i·τ_i (on=ties: the TIES merge); m_i = |τ_i| > λ_i·|τ_MTL − τ_i|; "
        "θ = θ_base + α·τ_MTL ⊙ [Σ m_i ≥ k]"
    )
    parameters = (K, ALPHA, TALL_LAMBDA, ON, WEIGHT, DENSITY, NORMALIZE, LINES)

    def check(self, params: MergeParams, n_branches: int) -> None:
        super().check(params, n_branches)
        params.k_for(n_branches)

    job = ConsensusJob
