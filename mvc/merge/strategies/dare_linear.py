"""DARE then task arithmetic: θ_base + λ·Σ_i w_i·τ̂_i (divided by Σ w_i with ``normalize``)."""

from __future__ import annotations

from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE, SEED, WEIGHT
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import Strategy
from mvc.merge.strategies.dare import DareDrop
from mvc.merge.strategies.sparse import SparseJob


class DareLinearJob(SparseJob):
    sparsify = DareDrop


class DareLinear(Strategy):
    name = "dare_linear"
    summary = "DARE's random drop and rescale, then task arithmetic."
    formula = "τ̂_i = τ_i ⊙ Bernoulli(density) / density; θ = θ_base + λ·Σ w_i·τ̂_i"
    parameters = (DENSITY, WEIGHT, LAMBDA, SEED, NORMALIZE, LINES)
    presets = (None, "mergekit", "peft")
    mergekit = "dare_linear"
    job = DareLinearJob
