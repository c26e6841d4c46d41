"""Helpers for methods whose statistics are not elementwise: exact Gram matrices, per-row
statistics and, for SVD-based methods, one tensor gathered on the host.

Everything here yields the same bits on either backend: exact sums (:mod:`mvc.merge.exact`)
do not depend on order, and what cannot be summed exactly (softmax, ranks, SVDs) is computed
by numpy on the host from the chunk's values, whichever backend holds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mvc.merge.arrays import Array
from mvc.merge.exact import ExactSum
from mvc.merge.strategies.base import Chunk, Pass, Step, TensorJob, TensorSpec

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


class GramPass(Pass):
    """Exact G[i, j] = v_i · v_j over a tensor, for the vectors ``vectors(chunk)`` returns."""

    def __init__(self, vectors: Callable[[Chunk], tuple[Array, ...]], n: int) -> None:
        self.vectors = vectors
        self.sums = {(i, j): ExactSum() for i in range(n) for j in range(i, n)}
        self.n = n

    def update(self, chunk: Chunk) -> None:
        ops = chunk.ops
        # fp32 products are exact in fp64; the exact sum makes the total order-free.
        wide = [ops.to_numpy(ops.astype(v, ops.float64)) for v in self.vectors(chunk)]
        for (i, j), total in self.sums.items():
            total.add(wide[i] * wide[j], scratch=True)

    def gram(self) -> np.ndarray:
        g = np.zeros((self.n, self.n))
        for (i, j), total in self.sums.items():
            g[i, j] = g[j, i] = total.value()
        return g


def row_vectors(chunk: Chunk, flat: Array) -> np.ndarray:
    """A flat chunk array as host float64 rows of the tensor's last dimension."""
    last = chunk.spec.shape[-1] if len(chunk.spec.shape) >= 2 else chunk.numel
    host = chunk.ops.to_numpy(flat).astype(np.float64)
    return host.reshape(-1, last)


def per_row(chunk: Chunk, values: np.ndarray) -> Array:
    """Per-row host coefficients (one per last-dim vector) as a column on the backend,
    in the compute dtype, ready to broadcast against ``row``-shaped arrays."""
    dtype = np.float64 if chunk.spec.compute_dtype == "F64" else np.float32
    return chunk.ops.from_numpy(np.ascontiguousarray(values.astype(dtype).reshape(-1, 1)))


def as_rows(chunk: Chunk, flat: Array) -> Array:
    """A flat chunk array reshaped to (vectors, last dim) on its backend."""
    last = chunk.spec.shape[-1] if len(chunk.spec.shape) >= 2 else chunk.numel
    return flat.reshape(-1, last)


@dataclass
class Gathered:
    """One tensor's inputs on the host, in the compute dtype, with the tensor's shape."""

    base: np.ndarray | None
    thetas: tuple[np.ndarray, ...]
    tau_scale: float

    def taus(self) -> tuple[np.ndarray, ...]:
        if self.base is None:
            raise RuntimeError("task vectors need the merge base")
        taus = tuple(t - self.base for t in self.thetas)
        if self.tau_scale != 1.0:
            taus = tuple(t * self.tau_scale for t in taus)
        return taus


class GatherPass(Pass):
    def __init__(self) -> None:
        self.parts: list[tuple[int, np.ndarray | None, tuple[np.ndarray, ...]]] = []
        self.scale = 1.0  # the LiNeS factor the chunks carry

    def update(self, chunk: Chunk) -> None:
        ops = chunk.ops
        base = None if chunk.base is None else ops.to_numpy(chunk.base_c)
        self.parts.append((chunk.start, base, tuple(ops.to_numpy(t) for t in chunk.thetas_c)))
        self.scale = chunk.tau_scale

    def assemble(self, spec: TensorSpec) -> Gathered:
        self.parts.sort(key=lambda part: part[0])

        def joined(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(arrays).reshape(spec.shape)

        has_base = self.parts[0][1] is not None
        base = joined([p[1] for p in self.parts]) if has_base else None  # type: ignore[misc]
        thetas = tuple(joined([p[2][i] for p in self.parts]) for i in range(spec.n_branches))
        self.parts = []
        return Gathered(base, thetas, self.scale)


class WholeTensorJob(TensorJob):
    """A job that gathers its tensor once, computes the merged tensor on the host with
    :meth:`compute`, and hands out its rows: at most one tensor's inputs held, identical
    bits on every backend."""

    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.result: np.ndarray | None = None

    def compute(self, inputs: Gathered) -> np.ndarray:
        """The merged tensor (compute dtype, the tensor's shape)."""
        raise NotImplementedError

    def plan(self) -> Iterator[Pass]:
        gather = GatherPass()
        yield gather
        inputs = gather.assemble(self.spec)
        dtype = np.float64 if self.spec.compute_dtype == "F64" else np.float32
        self.result = np.asarray(self.compute(inputs), dtype=dtype).reshape(-1)

    def step(self, chunk: Chunk) -> Step:
        assert self.result is not None, "combine before the gather pass"
        rows = self.result[chunk.flat_start : chunk.flat_start + chunk.numel]
        return Step(out=chunk.ops.from_numpy(np.ascontiguousarray(rows)))

    def onto_base(self, base: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """θ_base + λ·δ on the host (λ from ``--lambda``; no multiply when λ = 1, as
        ``apply_lambda`` on the device), δ cast to the base's dtype first."""
        lam = self.params.lambda_
        return base + (delta * lam if lam != 1 else delta).astype(base.dtype)
