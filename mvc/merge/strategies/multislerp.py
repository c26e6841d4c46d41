"""Multi-SLERP: barycentric interpolation of any number of branches on the hypersphere.

Each task vector (each branch's weights without a base) is projected to the unit sphere,
the weighted mean direction m is taken, the units are mapped to the tangent space at m,
averaged there with the weights and mapped back with the exponential map; the result is
rescaled to the weighted mean norm, as mergekit 0.1.5's ``multislerp`` (ε = 1e-8 in the
same places). Every step is a linear combination of the inputs, so the whole method runs
on their exact Gram matrix (one statistics pass) and a final Σ c_i·τ_i per chunk.
Weights are normalised to sum 1 unless ``--no-normalize-weights``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from mvc.errors import MvcError
from mvc.merge.declare import WEIGHT, Param
from mvc.merge.strategies.base import (
    Chunk,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
)
from mvc.merge.strategies.nuslerp import _vectors
from mvc.merge.strategies.task_arithmetic import weighted_sum
from mvc.merge.strategies.whole import GramPass

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

EPS = 1e-8
NORMALIZE_WEIGHTS = Param(
    "normalize_weights",
    bool,
    True,
    "Multi-SLERP: scale the weights to sum to 1 first.",
    mergekit="normalize_weights",
    mergekit_default=True,
)


def multislerp_coefficients(gram: np.ndarray, weights: np.ndarray, name: str) -> np.ndarray:
    """c with result = Σ c_i·v_i, from the Gram matrix of the v_i."""
    norms = np.sqrt(np.diag(gram))
    if not norms.any():  # nothing moved (an --all-tensors merge): the base, not an error
        return np.zeros_like(norms)
    scale = 1.0 / (norms + EPS)  # unit_i = scale_i · v_i
    mean = weights * scale  # mean direction, in the basis of the v_i
    mean_norm = float(np.sqrt(max(mean @ gram @ mean, 0.0)))
    if mean_norm < EPS:
        if len(weights) == 2:
            return weights.copy()  # mergekit falls back to the linear blend
        raise MvcError(
            f"multislerp: the weighted directions of {name} cancel out",
            hint="antipodal task vectors with balancing weights; change the weights",
        )
    mean = mean / mean_norm
    units = np.diag(scale)
    dots = units @ gram @ mean  # unit_i · mean
    tangent = weights @ units - (weights @ dots) * mean  # Σ w_i (unit_i − dot_i·mean)
    tangent_norm = float(np.sqrt(max(tangent @ gram @ tangent, 0.0))) + EPS
    result = mean * np.cos(tangent_norm) + tangent * (np.sin(tangent_norm) / tangent_norm)
    return result * float(norms @ weights)


class MultiSlerpJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        weights = np.array(self.weights, dtype=np.float64)
        if params.normalize_weights:
            weights = weights / weights.sum()
        self.w = weights
        self.c: np.ndarray | None = None

    def plan(self) -> Iterator:
        if self.spec.n_branches == 1:
            return
        gram = GramPass(_vectors, self.spec.n_branches)
        yield gram
        self.c = multislerp_coefficients(gram.gram(), self.w, self.spec.name)

    def step(self, chunk: Chunk) -> Step:
        vectors = _vectors(chunk)
        if self.c is None:
            return Step(out=chunk.thetas_c[0])
        merged = weighted_sum(vectors, tuple(float(c) for c in self.c), normalize=False)
        return Step(out=merged if chunk.base is None else chunk.base_c + merged)


class MultiSlerp(Strategy):
    name = "multislerp"
    summary = "Barycentric interpolation of any number of task vectors on the hypersphere."
    formula = (
        "m = normalise(Σ w_i·τ̂_i); t = Σ w_i·(τ̂_i − (τ̂_i·m)·m); "
        "θ = θ_base + Σ w_i‖τ_i‖·(cos‖t‖·m + sin‖t‖·t/‖t‖)"
    )
    parameters = (WEIGHT, NORMALIZE_WEIGHTS)
    presets = (None, "mergekit")
    mergekit = "multislerp"
    needs_base = False

    def check(self, params: MergeParams, n_branches: int) -> None:
        super().check(params, n_branches)
        if params.normalize_weights and abs(sum(params.weights_for(n_branches))) < 1e-12:
            raise MvcError("multislerp: weights sum to zero; they cannot be normalised")

    job = MultiSlerpJob
