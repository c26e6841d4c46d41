"""Task arithmetic: θ_base + λ·Σ_i w_i·τ_i (divided by Σ w_i with ``normalize``).

The same rule in mergekit and PEFT. The default preset copies θ_i verbatim where branch i
is the only one that changed the element and w_i = λ = 1 (mathematically identical).
"""

from __future__ import annotations

from mvc.merge.arrays import Array, ArrayOps
from mvc.merge.declare import LAMBDA, NORMALIZE, WEIGHT
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import (
    Chunk,
    Step,
    Strategy,
    TensorJob,
    resolved_normalize,
)
from mvc.merge.strategies.ties import apply_lambda


def weighted_sum(hats: tuple[Array, ...], weights: tuple[float, ...], normalize: bool) -> Array:
    """Σ w_i·τ̂_i, divided by Σ w_i when normalising (a near-zero sum divides by 1, as mergekit)."""
    total = hats[0] * weights[0]
    for h, w in zip(hats[1:], weights[1:], strict=True):
        total = total + h * w
    if normalize:
        den = sum(weights)
        total = total / (den if abs(den) >= 1e-8 else 1.0)
    return total


def sole_changes(
    ops: ArrayOps, hats: tuple[Array, ...], weights: tuple[float, ...]
) -> tuple[Array, ...]:
    """Elements where branch i alone moved and its weight is 1: the sum is exactly τ_i there."""
    moved = [h != 0 for h in hats]
    count = sum(ops.astype(m, ops.int32) for m in moved)
    return tuple(
        m & (count == 1) if w == 1 else ops.zeros_like(m, ops.bool_)
        for m, w in zip(moved, weights, strict=True)
    )


class TaskArithmeticJob(TensorJob):
    def step(self, chunk: Chunk) -> Step:
        taus = chunk.taus()
        normalize = resolved_normalize(self.params, False)
        delta = weighted_sum(taus, self.weights, normalize)
        exact = self.params.preset is None and self.params.lambda_ == 1 and not normalize
        return Step(
            out=apply_lambda(chunk.base_c, delta, self.params.lambda_),
            sole=sole_changes(chunk.ops, taus, self.weights) if exact else None,
        )


class TaskArithmetic(Strategy):
    name = "task_arithmetic"
    summary = "Add the weighted sum of the task vectors to the base."
    formula = "θ = θ_base + λ·Σ w_i·τ_i  (÷ Σ w_i with normalize)"
    parameters = (WEIGHT, LAMBDA, NORMALIZE, LINES)
    presets = (None, "mergekit", "peft")
    mergekit = "task_arithmetic"
    job = TaskArithmeticJob
