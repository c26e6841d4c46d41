"""SLERP between two branches' weights (θ_1 at t = 0, θ_2 at t = 1), as mergekit does it.

The angle comes from the whole tensor (flattened): ‖θ_1‖, ‖θ_2‖ and θ_1·θ_2 are exact sums
over one statistics pass (products of fp32 values are exact in fp64), so the result does not
depend on chunking. Nearly collinear pairs (|cos| > 0.9995) interpolate linearly; norms at
or below 1e-8 are treated as 1, as in mergekit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mvc.merge.declare import Param
from mvc.merge.exact import ExactSum
from mvc.merge.strategies.base import Chunk, Pass, Step, Strategy, TensorJob, TensorSpec

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

DOT_THRESHOLD = 0.9995
NORM_EPS = 1e-8

T = Param("t", float, 0.5, "Slerp interpolation factor.", mergekit="t", low=0.0, high=1.0)


class _DotPass(Pass):
    def __init__(self, sums: tuple[ExactSum, ExactSum, ExactSum]) -> None:
        self.sums = sums

    def update(self, chunk: Chunk) -> None:
        ops = chunk.ops
        a, b = (ops.astype(t, ops.float64) for t in chunk.thetas_c)
        self.sums[0].add(ops.to_numpy(a * a), scratch=True)
        self.sums[1].add(ops.to_numpy(b * b), scratch=True)
        self.sums[2].add(ops.to_numpy(a * b), scratch=True)


class SlerpJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.coefficients = (1.0 - params.t, params.t)

    def plan(self) -> Iterator:
        sums = (ExactSum(), ExactSum(), ExactSum())
        yield _DotPass(sums)
        norm_a, norm_b = (math.sqrt(s.value()) for s in sums[:2])
        norm_a = norm_a if norm_a > NORM_EPS else 1.0
        norm_b = norm_b if norm_b > NORM_EPS else 1.0
        dot = max(-1.0, min(1.0, sums[2].value() / norm_a / norm_b))
        if abs(dot) > DOT_THRESHOLD:
            return
        t = self.params.t
        theta = math.acos(dot)
        self.coefficients = (
            math.sin((1 - t) * theta) / math.sin(theta),
            math.sin(t * theta) / math.sin(theta),
        )

    def step(self, chunk: Chunk) -> Step:
        a, b = chunk.thetas_c
        ca, cb = self.coefficients
        return Step(out=ca * a + cb * b)


class Slerp(Strategy):
    name = "slerp"
    summary = "Spherical interpolation between exactly two branches' weights."
    formula = "Ω = ∠(θ_1, θ_2); θ = sin((1−t)Ω)/sin Ω·θ_1 + sin(tΩ)/sin Ω·θ_2 (linear if |cos Ω| > 0.9995)"
    parameters = (T,)
    presets = (None, "mergekit")
    needs_base = False
    min_branches = 2
    max_branches = 2
    mergekit = "slerp"
    mergekit_base = "first"
    job = SlerpJob
