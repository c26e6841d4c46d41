"""Sparsify, then combine: the task-vector merges built from two independent choices.

As mergekit's generalized task arithmetic composes a sparsification with a consensus step,
``dare_*``, ``breadcrumbs*`` and ``della*`` are one :class:`SparseJob` each: a sparsifier
(DARE's random drop, the breadcrumbs magnitude band, DELLA's MAGPRUNE) turns each τ_i into
τ̂_i, then either the weighted sum (``elect = False``) or TIES' sign election and disjoint
mean (``elect = True``) combines them, and λ scales the result onto the base.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Protocol

from mvc.merge.arrays import Array
from mvc.merge.strategies.base import Chunk, Pass, Step, TensorJob, TensorSpec, resolved_normalize
from mvc.merge.strategies.task_arithmetic import weighted_sum
from mvc.merge.strategies.ties import apply_lambda, elect_and_merge

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


class Sparsifier(Protocol):
    """Per-branch sparsification of one tensor's task vectors."""

    def __init__(self, params: MergeParams, spec: TensorSpec) -> None: ...

    def passes(self) -> Iterator[Pass]:
        """The statistics passes the sparsification needs (thresholds, norms)."""
        ...

    def apply(self, chunk: Chunk) -> tuple[Array, ...]:
        """τ̂_i of the chunk: the task vectors sparsified (and rescaled)."""
        ...


class SparseJob(TensorJob):
    """A task-vector merge: ``sparsify`` each τ_i, then sum them or elect signs (``elect``)."""

    sparsify: ClassVar[type[Sparsifier]]
    elect: ClassVar[bool] = False

    def __init__(self, params: MergeParams, spec: TensorSpec, *, masks: bool = False) -> None:
        super().__init__(params, spec, masks=masks)
        self.sparse = self.sparsify(params, spec)
        self.normalize = resolved_normalize(params, self.normalizes(params))

    def normalizes(self, params: MergeParams) -> bool:
        """Whether ``normalize`` is on by default: the sum adds as task arithmetic does; the
        election takes the weighted mean of the agreeing, except that mergekit sums them."""
        return self.elect and params.preset != "mergekit"

    def plan(self) -> Iterator[Pass]:
        yield from self.sparse.passes()

    def step(self, chunk: Chunk) -> Step:
        hats = self.sparse.apply(chunk)
        kept = tuple(h != 0 for h in hats)
        lam = self.params.lambda_
        if not self.elect:
            delta = weighted_sum(hats, self.weights, self.normalize)
            return Step(out=apply_lambda(chunk.base_c, delta, lam), kept=kept, signs=hats)
        election = elect_and_merge(
            chunk.ops, hats, self.weights, preset=self.params.preset, normalize=self.normalize
        )
        return Step(
            out=apply_lambda(chunk.base_c, election.delta, lam),
            kept=kept,
            contributed=election.agree,
            signs=hats,
        )
