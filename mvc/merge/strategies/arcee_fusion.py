"""Arcee Fusion: take theirs only where the change is large and matters.

With a = θ_ours and b = θ_theirs, the importance of element j of a row (last-dimension
vector; a 1-D tensor is one row) is |b_j − a_j| · KL(softmax(b_row) + 1e-8 ‖ softmax(a_row) +
1e-8). Elements with importance ≥ median + 1.5·(q₃ − q₁) over the tensor take b, the rest
keep a. The quartiles are order statistics at index int(q·(N − 1)) of the sorted
importances, as mergekit 0.1.5 takes them; mvc selects them exactly, where mergekit samples
a million elements at random for larger tensors. The merge base is not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from mvc.merge.arrays import Array
from mvc.merge.select import Request, Selection, magnitude_keys
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob, TensorSpec
from mvc.merge.strategies.whole import GatherPass, per_row, row_vectors

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

QUANTILES = (0.25, 0.5, 0.75)


def row_divergence(a_rows: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
    """KL(softmax(b) + 1e-8 ‖ softmax(a) + 1e-8) per row, in float64 on the host."""

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p = softmax(b_rows) + 1e-8
    q = softmax(a_rows) + 1e-8
    return (p * np.log(p / q)).sum(axis=1)


class ArceeFusionJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.whole_kl: float | None = None  # 1-D tensors: one row over every chunk
        self.threshold = 0.0
        n = spec.numel
        self.selection = Selection(
            [Request(0, False, int(q * (n - 1)) + 1) for q in QUANTILES],
            n,
            "F32",
            keys=lambda chunk: [magnitude_keys(chunk.ops, self.importance(chunk), as_fp32=True)],
        )

    def importance(self, chunk: Chunk) -> Array:
        a, b = chunk.thetas_c
        if len(self.spec.shape) >= 2:
            kl = row_divergence(row_vectors(chunk, a), row_vectors(chunk, b))
            last = self.spec.shape[-1]
            diff = abs(b - a).reshape(-1, last)
            return (diff * per_row(chunk, kl)).reshape(-1)
        assert self.whole_kl is not None
        return abs(b - a) * float(np.float32(self.whole_kl))

    def plan(self) -> Iterator:
        if len(self.spec.shape) < 2:
            gather = GatherPass()
            yield gather
            a, b = gather.assemble(self.spec).thetas
            rows = (x.reshape(1, -1).astype(np.float64) for x in (a, b))
            self.whole_kl = float(row_divergence(*rows)[0])
        if self.spec.numel <= 1:  # the one element is its own quartiles: it is taken
            self.threshold = -np.inf
            return
        yield from self.selection.passes()
        q1, median, q3 = (
            np.array([cut.value], dtype=np.int32).view(np.float32)[0] for cut in self.selection.cuts
        )
        self.threshold = float(median + np.float32(1.5) * (q3 - q1))

    def step(self, chunk: Chunk) -> Step:
        ops = chunk.ops
        a, b = chunk.thetas_c
        take = ops.astype(self.importance(chunk), ops.float32) >= self.threshold
        return Step(out=a + (b - a) * ops.astype(take, a.dtype))


class ArceeFusion(Strategy):
    name = "arcee_fusion"
    summary = "Take theirs only where |change| × the row's KL divergence is an outlier."
    formula = (
        "s_j = |θ_2 − θ_1|_j·KL(softmax θ_2 ‖ softmax θ_1)_row; "
        "θ = θ_1 + (θ_2 − θ_1)·[s ≥ q_50 + 1.5·(q_75 − q_25)]"
    )
    presets = (None, "mergekit")
    mergekit = "arcee_fusion"
    mergekit_base = "first"
    needs_base = False
    min_branches = 2
    max_branches = 2
    job = ArceeFusionJob
