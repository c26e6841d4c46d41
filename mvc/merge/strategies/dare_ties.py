"""DARE then TIES' sign election and disjoint mean (no magnitude trim).

mergekit's ``dare_ties`` does not normalise by default (the agreeing deltas are summed);
the default preset follows the design's table and takes the weighted mean like ``ties``.
"""

from __future__ import annotations

from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE, SEED, WEIGHT
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import Strategy
from mvc.merge.strategies.dare import DareDrop
from mvc.merge.strategies.sparse import SparseJob


class DareTiesJob(SparseJob):
    sparsify = DareDrop
    elect = True


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
    job = DareTiesJob
