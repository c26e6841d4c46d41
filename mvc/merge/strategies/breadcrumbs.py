"""Model breadcrumbs: per tensor drop the largest γ fraction of |τ_i| (outliers) and keep the
next β fraction (β is ``density``), then task arithmetic (``breadcrumbs``) or TIES' sign
election (``breadcrumbs_ties``).

As mergekit's ``magnitude_outliers``: with target = int(β·N), n_top = int(γ·N) and
n_bot = max(0, N − target − n_top), keep ascending magnitude ranks [n_bot, n_bot + target),
ranks of equal magnitudes ordered by flat index. Both cuts are exact rank selections.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mvc.merge.arrays import Array
from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE, WEIGHT, Param
from mvc.merge.lines import LINES
from mvc.merge.select import Request, Selection, magnitude_keys
from mvc.merge.strategies.base import Chunk, Pass, Strategy, TensorSpec
from mvc.merge.strategies.sparse import SparseJob

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


GAMMA = Param(
    "gamma",
    float,
    0.01,
    "Breadcrumbs: fraction of largest |τ| dropped.",
    mergekit="gamma",
    low=0.0,
    high=1.0,
    high_open=True,
)


class OutlierBand:
    """Per-branch magnitude bands of one tensor: the largest γ fraction of |τ_i| dropped, the
    next ``density`` fraction kept (two exact rank cuts per branch)."""

    def __init__(self, params: MergeParams, spec: TensorSpec) -> None:
        numel = spec.numel
        requests = []
        for i, d in enumerate(params.densities_for(spec.n_branches)):
            if d >= 1:
                low, high = 0, numel
            else:
                target = int(d * numel)
                low = max(0, numel - target - int(params.gamma * numel))
                high = low + target
            requests += [Request(i, False, low), Request(i, False, high)]
        self.selection = Selection(requests, numel, spec.dtype)

    def passes(self) -> Iterator[Pass]:
        yield from self.selection.passes()

    def apply(self, chunk: Chunk) -> tuple[Array, ...]:
        """τ̂_i: each task vector outside its kept magnitude band zeroed."""
        ops, cuts = chunk.ops, self.selection.cuts
        hats = []
        for i, (tau, mag) in enumerate(zip(chunk.taus(), chunk.magnitudes(), strict=True)):
            keys = magnitude_keys(ops, mag)
            below_low = cuts[2 * i].apply(ops, keys, chunk.flat_start)
            below_high = cuts[2 * i + 1].apply(ops, keys, chunk.flat_start)
            hats.append(tau * (below_high & ~below_low))
        return tuple(hats)


class BreadcrumbsJob(SparseJob):
    sparsify = OutlierBand


class BreadcrumbsTiesJob(SparseJob):
    """The breadcrumbs band, then TIES' weighted sign election over what survives (mergekit
    sums the agreeing edits; the default takes their weighted mean, as ties does)."""

    sparsify = OutlierBand
    elect = True


class Breadcrumbs(Strategy):
    name = "breadcrumbs"
    summary = "Drop each task vector's largest |τ| (outliers) and its smallest, then add."
    formula = (
        "τ̂_i = τ_i where |τ_i| ranks in the band below the top γ, of width density; "
        "θ = θ_base + λ·Σ w_i·τ̂_i"
    )
    parameters = (DENSITY, GAMMA, WEIGHT, LAMBDA, NORMALIZE, LINES)
    presets = (None, "mergekit")
    mergekit = "breadcrumbs"
    job = BreadcrumbsJob


class BreadcrumbsTies(Breadcrumbs):
    name = "breadcrumbs_ties"
    summary = "The breadcrumbs band of each task vector, then TIES' sign election."
    formula = (
        "τ̂_i = τ_i where |τ_i| ranks in the band below the top γ, of width density; "
        "θ = θ_base + λ·Σ_agree w_i·τ̂_i (/ Σ_agree w_i by default)"
    )
    mergekit = "breadcrumbs_ties"
    job = BreadcrumbsTiesJob
