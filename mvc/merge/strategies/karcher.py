"""Karcher mean: the Riemannian (Fréchet) mean of the branches' weights on the hypersphere.

Each θ_i is split into norm and direction; the mean direction is found by at most
``max_iter`` Riemannian gradient steps (stopping when the tangent norm is below ``tol``),
directions with a norm at or below ``tol`` are left out, and the result is rescaled by the
weighted mean norm, as mergekit 0.1.5's ``karcher``. The merge base is not used.

Every iterate is a linear combination of the θ_i, so the iteration runs in float64 on
their exact Gram matrix (one statistics pass) and each chunk is just Σ c_i·θ_i. mergekit
iterates in fp32; on nearly collinear weights (real fine-tunes) its angles carry fp32
cancellation error that this computation does not have. The mean weighs the branches
equally, as mergekit's does (it takes no weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from mvc.merge.declare import Param
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob, TensorSpec
from mvc.merge.strategies.task_arithmetic import weighted_sum
from mvc.merge.strategies.whole import GramPass

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

MAX_ITER = Param(
    "max_iter",
    int,
    10,
    "Karcher: most Riemannian gradient steps.",
    mergekit="max_iter",
    low=1,
    high=1000,
    mergekit_default=10,
)
TOL = Param(
    "tol",
    float,
    1e-5,
    "Karcher: stop when the tangent step is below this (and skip smaller norms).",
    mergekit="tol",
    low=0.0,
    low_open=True,
    mergekit_default=1e-5,
)


def karcher_coefficients(
    gram: np.ndarray, alphas: np.ndarray, max_iter: int, tol: float
) -> np.ndarray:
    """c with the Karcher mean = Σ c_i·θ_i, from the Gram matrix of the θ_i."""
    n = len(alphas)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return np.zeros(n)
    units = np.zeros((n, n))  # row i: unit_i in the basis of the θ_j
    for i in valid:
        units[i, i] = 1.0 / norms[i]
    weights = alphas[valid] / alphas[valid].sum()

    def norm(c: np.ndarray) -> float:
        return math.sqrt(max(float(c @ gram @ c), 0.0))

    mean = weights @ units[valid]
    mean_norm = norm(mean)
    mean = units[valid[0]].copy() if mean_norm < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = np.zeros(n)
        for w, i in zip(weights, valid, strict=True):
            dot = max(-1.0, min(1.0, float(mean @ gram @ units[i])))
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent = tangent + w * (theta / math.sin(theta)) * (units[i] - dot * mean)
        tangent_norm = norm(tangent)
        if tangent_norm < tol:
            break
        mean = math.cos(tangent_norm) * mean + math.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = norm(mean)
        if unit_norm > tol:
            mean = mean / unit_norm
    return mean * float(alphas @ norms)


class KarcherJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        n = spec.n_branches
        self.alphas = np.full(n, 1.0 / n)
        self.c: np.ndarray | None = None

    def plan(self) -> Iterator:
        if self.spec.n_branches == 1:
            return
        gram = GramPass(lambda chunk: chunk.thetas_c, self.spec.n_branches)
        yield gram
        self.c = karcher_coefficients(
            gram.gram(), self.alphas, self.params.max_iter, self.params.tol
        )

    def step(self, chunk: Chunk) -> Step:
        thetas = chunk.thetas_c
        if self.c is None:
            return Step(out=thetas[0])
        return Step(out=weighted_sum(thetas, tuple(float(c) for c in self.c), normalize=False))


class Karcher(Strategy):
    name = "karcher"
    summary = "The Riemannian mean of the branches' weights on the hypersphere, rescaled."
    formula = "m = argmin Σ_i d(m, θ_i/‖θ_i‖)² on the sphere (gradient steps); θ = mean_i ‖θ_i‖·m"
    parameters = (MAX_ITER, TOL)
    presets = (None, "mergekit")
    mergekit = "karcher"
    mergekit_base = "none"
    needs_base = False
    job = KarcherJob
