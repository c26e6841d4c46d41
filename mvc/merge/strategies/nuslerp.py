"""NuSLERP: spherical interpolation of two branches by their weights, on task vectors.

t = w_2 / (w_1 + w_2) (0.5 when the weights sum to within 1e-6 of 0). With a merge base
the task vectors are interpolated and added back (θ_base + slerp(t, τ_1, τ_2)); without
one, the weights themselves. The angle comes from the whole tensor (``flatten``, the
default), from each row (last-dimension vector), or with ``row_wise`` from each column
(dim-0 vector). Nearly collinear pairs (1 − cos² ≤ 1e-16) interpolate linearly, as
mergekit 0.1.5 does. Exactly two branches: use multislerp for more.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from mvc.merge.arrays import Array
from mvc.merge.declare import WEIGHT, Param
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob, TensorSpec
from mvc.merge.strategies.whole import Gathered, GatherPass, GramPass, per_row, row_vectors

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

ROW_WISE = Param(
    "row_wise",
    bool,
    False,
    "NuSLERP: one angle per column (dim-0 vector) when not flattened.",
    mergekit="nuslerp_row_wise",
    mergekit_default=False,
)
FLATTEN = Param(
    "flatten",
    bool,
    True,
    "NuSLERP: one angle for the whole tensor (off: per row or column).",
    mergekit="nuslerp_flatten",
    mergekit_default=True,
)
_NORM_EPS = 1e-7
_COLINEAR = 1e-16  # (1e-8)², mergekit's eps squared


def slerp_coefficients(t: float, n0: np.ndarray, n1: np.ndarray, dot: np.ndarray):
    """(c0, c1, divisor) with slerp = (c0·v0 + c1·v1) / divisor, elementwise over vectors."""
    cos = np.clip(dot / (np.maximum(n0, _NORM_EPS) * np.maximum(n1, _NORM_EPS)), -1.0, 1.0)
    colinear = (1 - cos * cos) <= _COLINEAR
    theta = np.arccos(np.where(colinear, 0.0, cos))
    sin_theta = np.where(colinear, 1.0, np.sin(theta))
    c0 = np.where(colinear, 1 - t, np.sin((1 - t) * theta))
    c1 = np.where(colinear, t, np.sin(t * theta))
    return c0, c1, sin_theta


def interpolation_t(weights: tuple[float, float]) -> float:
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def _vectors(chunk: Chunk) -> tuple[Array, ...]:
    return chunk.taus() if chunk.base is not None else chunk.thetas_c


class NuSlerpJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.t = interpolation_t(self.weights)  # type: ignore[arg-type]
        if params.flatten or len(spec.shape) < 2:
            self.mode = "flat"
        else:
            self.mode = "columns" if params.row_wise else "rows"
        self.coefficients: tuple[float, float, float] | None = None
        self.columns: np.ndarray | None = None

    def plan(self) -> Iterator:
        if self.mode == "flat":
            gram = GramPass(_vectors, 2)
            yield gram
            g = gram.gram()
            c0, c1, s = slerp_coefficients(self.t, np.sqrt(g[0, 0]), np.sqrt(g[1, 1]), g[0, 1])
            self.coefficients = (float(c0), float(c1), float(s))
        elif self.mode == "columns":  # each dim-0 vector spans every chunk: hold the tensor
            gather = GatherPass()
            yield gather
            self.columns = self._columns(gather.assemble(self.spec))

    def _columns(self, inputs: Gathered) -> np.ndarray:
        v0, v1 = inputs.taus() if inputs.base is not None else inputs.thetas
        a = v0.reshape(v0.shape[0], -1).astype(np.float64)
        b = v1.reshape(v1.shape[0], -1).astype(np.float64)
        c0, c1, s = slerp_coefficients(
            self.t, np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0)), (a * b).sum(0)
        )
        dtype = np.float64 if self.spec.compute_dtype == "F64" else np.float32
        return np.stack([c0, c1, s]).astype(dtype)

    def step(self, chunk: Chunk) -> Step:
        ops = chunk.ops
        v0, v1 = _vectors(chunk)
        if self.mode == "flat":
            assert self.coefficients is not None
            c0, c1, s = self.coefficients
            merged = (c0 * v0 + c1 * v1) / s
        elif self.mode == "rows":
            r0, r1 = row_vectors(chunk, v0), row_vectors(chunk, v1)
            c0, c1, s = slerp_coefficients(
                self.t,
                np.sqrt((r0 * r0).sum(1)),
                np.sqrt((r1 * r1).sum(1)),
                (r0 * r1).sum(1),
            )
            last = self.spec.shape[-1]
            rows0, rows1 = v0.reshape(-1, last), v1.reshape(-1, last)
            merged = (
                (per_row(chunk, c0) * rows0 + per_row(chunk, c1) * rows1) / per_row(chunk, s)
            ).reshape(-1)
        else:
            assert self.columns is not None
            width = chunk.numel // max(chunk.n_rows, 1)
            c0, c1, s = (ops.from_numpy(np.ascontiguousarray(c)) for c in self.columns)
            rows0, rows1 = v0.reshape(-1, width), v1.reshape(-1, width)
            merged = ((c0 * rows0 + c1 * rows1) / s).reshape(-1)
        return Step(out=merged if chunk.base is None else chunk.base_c + merged)


class NuSlerp(Strategy):
    name = "nuslerp"
    summary = "Spherical interpolation of two branches' task vectors, t from their weights."
    formula = (
        "t = w_2/(w_1 + w_2); Ω = ∠(τ_1, τ_2); θ = θ_base + (sin((1−t)Ω)·τ_1 + sin(tΩ)·τ_2)/sin Ω"
    )
    parameters = (WEIGHT, FLATTEN, ROW_WISE)
    presets = (None, "mergekit")
    mergekit = "nuslerp"
    needs_base = False
    min_branches = 2
    max_branches = 2
    job = NuSlerpJob
