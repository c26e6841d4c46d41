"""DARE's drop-and-rescale, shared by ``dare_ties`` and ``dare_linear``.

Each τ_i entry survives with probability ``density`` (p = 1 − density), drawn from the
counter-based generator of :mod:`mvc.merge.rng`, so the mask depends only on (seed, tensor
name, branch, element). Survivors are rescaled:

- default and ``peft``: divided by density (the DARE paper's 1/(1 − p));
- ``mergekit``: by ‖τ_i‖₁ / ‖τ_i ⊙ keep‖₁ over the whole tensor, skipped when either norm is
  below 1e-7. The norms come from one statistics pass with exact sums (chunking-proof).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from mvc.merge.arrays import Array
from mvc.merge.exact import ExactSum
from mvc.merge.rng import keep_mask
from mvc.merge.strategies.base import Chunk, Pass, TensorSpec

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

_NORM_EPS = 1e-7


class L1RescalePass(Pass):
    """Sums |τ| before and after a drop, per branch: the L1 rescale of DARE and DELLA
    (any drop with ``keeps(chunk)`` and ``before``/``after`` accumulators)."""

    def __init__(self, drop: Any) -> None:
        self.drop = drop

    def update(self, chunk: Chunk) -> None:
        ops = chunk.ops
        for i, (tau, keep) in enumerate(zip(chunk.taus(), self.drop.keeps(chunk), strict=True)):
            if keep is not None:
                self.drop.before[i].add(ops.to_numpy(abs(tau)))
                self.drop.after[i].add(ops.to_numpy(abs(tau * keep)))


class DareDrop:
    """Per-branch random keep masks and rescale factors for one tensor."""

    def __init__(self, params: MergeParams, spec: TensorSpec) -> None:
        self.params = params
        self.spec = spec
        self.densities = params.densities_for(spec.n_branches)
        self.l1 = params.preset == "mergekit"
        self.before = [ExactSum() for _ in self.densities]
        self.after = [ExactSum() for _ in self.densities]
        self.scales: list[float | None] = [None] * len(self.densities)

    def keeps(self, chunk: Chunk) -> list[Array | None]:
        """Keep masks (compute dtype, 0/1) for the chunk; None where density is 1 (no drop)."""
        ops = chunk.ops
        dtype = ops.float64 if self.spec.compute_dtype == "F64" else ops.float32
        return [
            None
            if d >= 1
            else ops.astype(
                keep_mask(
                    self.params.seed, self.spec.name, i, chunk.flat_start, chunk.numel, d, ops
                ),
                dtype,
            )
            for i, d in enumerate(self.densities)
        ]

    def passes(self) -> Iterator[Pass]:
        if not self.l1 or all(d >= 1 for d in self.densities):
            return
        yield L1RescalePass(self)
        for i, d in enumerate(self.densities):
            if d >= 1:
                continue
            before, after = self.before[i].value(), self.after[i].value()
            if before < _NORM_EPS or after < _NORM_EPS:
                continue
            # Divided in the compute dtype, as mergekit divides its norm tensors.
            real = np.float64 if self.spec.compute_dtype == "F64" else np.float32
            self.scales[i] = float(real(before) / real(after))

    def apply(self, chunk: Chunk) -> tuple[Array, ...]:
        """τ̂_i: dropped and rescaled task vectors of the chunk."""
        out = []
        for i, (tau, keep) in enumerate(zip(chunk.taus(), self.keeps(chunk), strict=True)):
            if keep is None:
                out.append(tau)
            elif self.l1:
                masked = tau * keep
                out.append(masked if self.scales[i] is None else masked * self.scales[i])
            else:
                out.append(tau * keep / self.densities[i])
        return tuple(out)
