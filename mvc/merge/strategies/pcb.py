"""PCB-merging (Du et al., NeurIPS 2024, "Parameter Competition Balancing"), per tensor.

For the task vectors τ_i of one tensor (flattened; the paper's code flattens the whole
model, which no streaming merge can hold):

- |τ_i| is clamped to its own [0.01 %, 99.99 %] order statistics (outliers flattened);
- intra-balancing: exp(T · norm(|τ_i|)²), norm a min-max scaling over the tensor;
- inter-balancing: tanh(τ_i · Σ_j τ_j), large when a branch agrees with the consensus;
- their product is clamped from below at its (1 − ratio) order statistic (``density`` is
  the ratio of elements that compete; 1 keeps every element) and min-max scaled to a score
  s_i ∈ [0, 1];
- θ = θ_base + λ·Σ_i s_i·τ̃_i / max(Σ_i s_i, 1e-12), τ̃ the outlier-clamped task vectors.

The paper tunes λ and the ratio on validation data; the defaults are λ = 1, ratio 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mvc.errors import MvcError
from mvc.merge.declare import DENSITY, LAMBDA
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import Strategy
from mvc.merge.strategies.whole import Gathered, WholeTensorJob

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

OUTLIER_RATIO = 0.0001


def _clamp_rows(x: np.ndarray, low_ratio: float, high_ratio: float) -> np.ndarray:
    """Each row clamped to its order statistics at int(d·low) and int(d·(1 − high)) − 1."""
    d = x.shape[1]
    ordered = np.sort(x, axis=1)
    low = ordered[:, int(d * low_ratio)][:, None]
    high = ordered[:, int(d * (1 - high_ratio)) - 1][:, None]
    return np.minimum(np.maximum(x, low), high)


def _min_max_rows(x: np.ndarray) -> np.ndarray:
    low = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - low
    return (x - low) / np.maximum(span, 1e-12)


def pcb_delta(taus: np.ndarray, ratio: float) -> np.ndarray:
    """The merged task vector of task vectors stacked as rows (n, d)."""
    n = taus.shape[0]
    magnitude = _clamp_rows(np.abs(taus), OUTLIER_RATIO, OUTLIER_RATIO)
    clamped = np.sign(taus) * magnitude
    intra = np.exp(n * _min_max_rows(magnitude) ** 2)
    inter = np.tanh(taus * taus.sum(axis=0))
    score = _min_max_rows(_clamp_rows(intra * inter, 1 - ratio, 0.0))
    return (clamped * score).sum(axis=0) / np.maximum(score.sum(axis=0), 1e-12)


class PcbJob(WholeTensorJob):
    def compute(self, inputs: Gathered) -> np.ndarray:
        taus = inputs.taus()
        assert inputs.base is not None
        if inputs.base.size == 0:
            return inputs.base
        ratio = self.params.densities_for(self.spec.n_branches)[0]
        stacked = np.stack([t.reshape(-1) for t in taus])
        delta = pcb_delta(stacked, ratio).reshape(inputs.base.shape)
        return self.onto_base(inputs.base, delta)


class Pcb(Strategy):
    name = "pcb"
    summary = "PCB: score each element by self- and cross-task balance, mix by the scores."
    formula = (
        "s_i = norm(clamp(exp(T·norm|τ_i|²)·tanh(τ_i·Σ_j τ_j), ratio)); "
        "θ = θ_base + λ·Σ s_i·τ_i / Σ s_i"
    )
    parameters = (DENSITY, LAMBDA, LINES)

    def check(self, params: MergeParams, n_branches: int) -> None:
        super().check(params, n_branches)
        if len(set(params.densities_for(n_branches))) > 1:
            raise MvcError("pcb ranks all branches' scores together: give one --density")

    job = PcbJob
