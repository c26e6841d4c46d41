"""DELLA (Deep, Lee et al. 2024, "DELLA-Merging"): MAGPRUNE drops, then TIES or a weighted sum.

MAGPRUNE ranks |τ_i| within each row (the last dimension of a 2-D weight; a 1-D tensor is
one row) and keeps element j with probability p_j = (d − ε) + 2ε·(rank_j − 1)/(n − 1), so
large changes survive more often and the mean keep rate is the density d. Survivors are
rescaled so the expected task vector is unchanged:

- default: each survivor divided by its own p_j (the paper's 1/(1 − drop probability));
- ``mergekit``: every survivor multiplied by ‖τ_i‖₁ / ‖τ_i ⊙ keep‖₁ over the tensor (skipped
  when either norm is below 1e-7), mergekit 0.1.5's ``rescale``;
- ``--no-rescale``: survivors kept as they are.

``della`` then elects signs and takes the weighted mean of the agreeing (``normalize``),
``della_linear`` takes the weighted sum. The keep draws come from the counter-based
generator DARE uses (:mod:`mvc.merge.rng`); ranks of equal magnitudes go by index.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from mvc.errors import MvcError
from mvc.merge.arrays import Array
from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE, SEED, WEIGHT, Param
from mvc.merge.exact import ExactSum
from mvc.merge.lines import LINES
from mvc.merge.rng import stream_key, uniforms
from mvc.merge.strategies.base import Chunk, Pass, Strategy, TensorSpec
from mvc.merge.strategies.dare import L1RescalePass
from mvc.merge.strategies.sparse import SparseJob
from mvc.merge.strategies.whole import Gathered, GatherPass

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

EPSILON = Param(
    "epsilon",
    float,
    0.15,
    "DELLA: keep probabilities spread over density ± ε by |τ| rank.",
    mergekit="epsilon",
    low=0.0,
    high=1.0,
    high_open=True,
)
RESCALE = Param(
    "rescale",
    bool,
    None,
    "DELLA: undo the drop's shrinkage (default on: 1/p per element; mergekit: L1 per tensor).",
    mergekit="rescale",
    optional=True,
)
_NORM_EPS = 1e-7


def rank_fraction(magnitude: np.ndarray) -> np.ndarray:
    """(rank − 1)/(n − 1) of each |τ| within its row (axis 1), ascending, ties by index; fp32.

    A row of one element sits in the middle (0.5): mergekit's formula is 0/0 there.
    """
    n = magnitude.shape[1]
    if n == 1:
        return np.full(magnitude.shape, 0.5, dtype=np.float32)
    # A stable argsort, then its inverse, as one sort: non-negative fp32 values order as
    # their bits do, so (bits << 32 | column) are distinct keys whose ascending order is
    # the stable order; the low half of each sorted key is the column holding that rank.
    rows = np.moveaxis(magnitude, 1, -1)  # axis 1 last, so N-D tensors rank as 2-D rows
    bits = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, n).view(np.uint32)
    keys = (bits.astype(np.int64) << 32) | np.arange(n, dtype=np.int64)
    keys.sort(axis=1)
    ranks = np.empty(keys.shape, dtype=np.float32)
    steps = np.broadcast_to(np.arange(n, dtype=np.float32), keys.shape)
    np.put_along_axis(ranks, keys & 0xFFFFFFFF, steps, axis=1)
    return np.moveaxis(ranks.reshape(rows.shape), -1, 1) / np.float32(n - 1)


def keep_probabilities(magnitude: np.ndarray, density: float, epsilon: float) -> np.ndarray:
    """MAGPRUNE's per-element keep probabilities for host |τ| shaped as rows (axis 1), fp32."""
    return (density - epsilon) + rank_fraction(magnitude) * 2 * epsilon


def keep_draws(seed: int, name: str, branch: int, start: int, probs: np.ndarray) -> np.ndarray:
    """True where element ``start + j`` survives (uniform < p_j), from mvc's generator."""
    u = uniforms(stream_key(seed, name, branch), start, probs.size)
    return u.reshape(probs.shape) < probs


def _rows(spec: TensorSpec, flat: np.ndarray) -> np.ndarray:
    """Host values shaped as mergekit ranks them: 1-D (and 0-d) tensors as one row."""
    if len(spec.shape) < 2:
        return flat.reshape(1, -1)
    return flat.reshape(-1, *spec.shape[1:])


class MagPrune:
    """Per-branch MAGPRUNE keep masks (and rescale factors) for one tensor."""

    def __init__(self, params: MergeParams, spec: TensorSpec) -> None:
        self.params = params
        self.spec = spec
        self.densities = params.densities_for(spec.n_branches)
        self.epsilon = params.epsilon
        self.rescale = True if params.rescale is None else params.rescale
        self.l1 = self.rescale and params.preset == "mergekit"
        self.before = [ExactSum() for _ in self.densities]
        self.after = [ExactSum() for _ in self.densities]
        self.scales: list[float | None] = [None] * len(self.densities)
        self.whole_magnitudes: tuple[np.ndarray, ...] | None = None  # 1-D tensors
        self._packed: dict[tuple[int, int, int], np.ndarray] = {}  # (branch, start, numel)

    def passes(self) -> Iterator[Pass]:
        if all(d >= 1 for d in self.densities):
            return
        if len(self.spec.shape) < 2:  # one row spanning every chunk: rank it whole
            gather = GatherPass()
            yield gather
            inputs: Gathered = gather.assemble(self.spec)
            self.whole_magnitudes = tuple(
                np.abs(t).reshape(1, -1).astype(np.float32) for t in inputs.taus()
            )
        if not self.l1:
            return
        yield L1RescalePass(self)
        real = np.float64 if self.spec.compute_dtype == "F64" else np.float32
        for i, d in enumerate(self.densities):
            before, after = self.before[i].value(), self.after[i].value()
            if d < 1 and before >= _NORM_EPS and after >= _NORM_EPS:
                self.scales[i] = float(real(before) / real(after))

    def _probabilities(self, chunk: Chunk, i: int, tau: Array) -> np.ndarray:
        """Host keep probabilities of the chunk's elements of branch i, flat."""
        d = self.densities[i]
        if self.whole_magnitudes is not None:
            probs = keep_probabilities(self.whole_magnitudes[i], d, self.epsilon).reshape(-1)
            return probs[chunk.flat_start : chunk.flat_start + chunk.numel]
        host = np.abs(chunk.ops.to_numpy(tau)).astype(np.float32)
        return keep_probabilities(_rows(self.spec, host), d, self.epsilon).reshape(-1)

    def _draw(self, chunk: Chunk, i: int, tau: Array) -> tuple[np.ndarray, np.ndarray]:
        """Branch i's host keep mask (bool) and keep probabilities for the chunk, flat."""
        probs = self._probabilities(chunk, i, tau)
        keep = keep_draws(self.params.seed, self.spec.name, i, chunk.flat_start, probs)
        return keep.reshape(-1), probs

    def _draws(self, chunk: Chunk) -> list[tuple[int, np.ndarray, np.ndarray] | None]:
        """Each branch's (index, keep mask, probabilities), None where its density is 1."""
        return [
            None if d >= 1 else (i, *self._draw(chunk, i, tau))
            for i, (d, tau) in enumerate(zip(self.densities, chunk.taus(), strict=True))
        ]

    def _as_weights(self, chunk: Chunk, keep: np.ndarray) -> Array:
        ops = chunk.ops
        dtype = ops.float64 if self.spec.compute_dtype == "F64" else ops.float32
        return ops.astype(ops.from_numpy(keep), dtype)

    def keeps_and_probs(self, chunk: Chunk) -> list[tuple[Array, Array] | None]:
        return [
            None if d is None else (self._as_weights(chunk, d[1]), chunk.ops.from_numpy(d[2]))
            for d in self._draws(chunk)
        ]

    def keeps(self, chunk: Chunk) -> list[Array | None]:
        """The L1 pass's keep masks; each is also kept packed (1 bit per element, at most
        one tensor's worth) so :meth:`apply` need not rank and draw the chunk again."""
        out: list[Array | None] = []
        for draw in self._draws(chunk):
            if draw is not None:
                i, keep, _ = draw
                self._packed[(i, chunk.flat_start, chunk.numel)] = np.packbits(keep)
            out.append(None if draw is None else self._as_weights(chunk, draw[1]))
        return out

    def _l1_keep(self, chunk: Chunk, i: int, tau: Array) -> Array:
        """Branch i's keep mask under the L1 rescale: the one the L1 pass drew."""
        ops = chunk.ops
        dtype = ops.float64 if self.spec.compute_dtype == "F64" else ops.float32
        packed = self._packed.pop((i, chunk.flat_start, chunk.numel), None)
        if packed is None:
            keep = self._draw(chunk, i, tau)[0]
        else:
            keep = np.unpackbits(packed, count=chunk.numel).view(bool)
        return ops.astype(ops.from_numpy(keep), dtype)

    def apply(self, chunk: Chunk) -> tuple[Array, ...]:
        """τ̂_i: pruned and rescaled task vectors of the chunk."""
        if self.l1:
            out = []
            for i, (d, tau) in enumerate(zip(self.densities, chunk.taus(), strict=True)):
                if d >= 1:
                    out.append(tau)
                    continue
                masked = tau * self._l1_keep(chunk, i, tau)
                out.append(masked if self.scales[i] is None else masked * self.scales[i])
            return tuple(out)
        out = []
        for tau, kp in zip(chunk.taus(), self.keeps_and_probs(chunk), strict=True):
            if kp is None:
                out.append(tau)
                continue
            keep, probs = kp
            masked = tau * keep
            out.append(masked / probs if self.rescale else masked)
        return tuple(out)


class DellaLinearJob(SparseJob):
    sparsify = MagPrune


class DellaJob(SparseJob):
    """MAGPRUNE, then TIES' election with the weighted mean by default (mergekit's too)."""

    sparsify = MagPrune
    elect = True

    def normalizes(self, params: MergeParams) -> bool:
        return True


class Della(Strategy):
    name = "della"
    summary = "MAGPRUNE: keep |τ| by rank-weighted chance, rescale, then TIES' sign election."
    formula = (
        "p = density − ε + 2ε·rank(|τ_i|)/(n−1) per row; τ̂_i = τ_i ⊙ Bernoulli(p)/p; "
        "θ = θ_base + λ·Σ_agree w_i·τ̂_i / Σ_agree w_i"
    )
    parameters = (DENSITY, EPSILON, WEIGHT, LAMBDA, RESCALE, NORMALIZE, SEED, LINES)
    presets = (None, "mergekit")
    mergekit = "della"
    job = DellaJob

    def check(self, params: MergeParams, n_branches: int) -> None:
        super().check(params, n_branches)
        eps = params.epsilon
        for d in params.densities_for(n_branches):
            if d < 1 and not (0 < d - eps and d + eps < 1):
                raise MvcError(
                    f"{self.name}: density ± epsilon must lie in (0, 1), got density {d}, "
                    f"epsilon {eps}"
                )


class DellaLinear(Della):
    name = "della_linear"
    summary = "MAGPRUNE drops and rescale, then the weighted sum of the task vectors."
    formula = (
        "p = density − ε + 2ε·rank(|τ_i|)/(n−1) per row; τ̂_i = τ_i ⊙ Bernoulli(p)/p; "
        "θ = θ_base + λ·Σ w_i·τ̂_i"
    )
    mergekit = "della_linear"
    job = DellaLinearJob
