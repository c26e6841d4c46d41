"""Model Stock (Jang et al. 2024): interpolate between the base and the branches' average by
how much the fine-tunes agree.

With the mean pairwise cosine c of the task vectors τ_i (norms clamped to ≥ 1e-6, c clamped
to [−1, 1]) over n branches, t = n·c / (1 + (n − 1)·c) and θ = t·mean_i θ_i + (1 − t)·θ_base;
where 1 + (n − 1)·c is within 1e-6 of 0 the base is kept (t = 0), as mergekit 0.1.5 does.
The cosines come from exact sums over the whole tensor, or with ``filter_wise`` from each
row (last-dimension vector) on its own. Needs at least two branches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from mvc.merge.declare import Param
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob, TensorSpec
from mvc.merge.strategies.whole import GramPass, per_row, row_vectors

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

FILTER_WISE = Param(
    "filter_wise",
    bool,
    False,
    "Model Stock: one interpolation ratio per row instead of per tensor.",
    mergekit="filter_wise",
    mergekit_default=False,
)


def interpolation_ratio(gram: np.ndarray) -> np.ndarray:
    """t from Gram matrices of the task vectors, shaped (n, n, ...) (one per filter)."""
    n = gram.shape[0]
    norms = np.sqrt(np.stack([gram[i, i] for i in range(n)]))
    cosines = [
        np.clip(gram[i, j] / np.maximum(norms[i] * norms[j], 1e-6), -1.0, 1.0)
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cos = sum(cosines[1:], cosines[0]) / len(cosines)
    denominator = 1 + (n - 1) * cos
    singular = np.abs(denominator) < 1e-6
    return np.where(singular, 0.0, n * cos / np.where(singular, 1.0, denominator))


class ModelStockJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.filter_wise = params.filter_wise and len(spec.shape) >= 2
        self.t = 0.0

    def plan(self) -> Iterator:
        if self.filter_wise:
            return
        gram = GramPass(lambda chunk: chunk.taus(), self.spec.n_branches)
        yield gram
        self.t = float(interpolation_ratio(gram.gram()))

    def _row_ratios(self, chunk: Chunk) -> np.ndarray:
        rows = [row_vectors(chunk, tau) for tau in chunk.taus()]
        n = len(rows)
        gram = np.empty((n, n, rows[0].shape[0]))
        for i in range(n):
            for j in range(i, n):
                gram[i, j] = gram[j, i] = (rows[i] * rows[j]).sum(axis=1)
        return interpolation_ratio(gram)

    def step(self, chunk: Chunk) -> Step:
        n = self.spec.n_branches
        taus = chunk.taus()
        if self.filter_wise:
            last = self.spec.shape[-1]
            t = per_row(chunk, self._row_ratios(chunk))
            base = chunk.base_c.reshape(-1, last)
            average = base + sum(taus[1:], taus[0]).reshape(-1, last) / n
            return Step(out=(t * average + (1 - t) * base).reshape(-1))
        t32 = np.float32(self.t)
        average = chunk.base_c + sum(taus[1:], taus[0]) / n
        return Step(out=average * float(t32) + chunk.base_c * float(np.float32(1) - t32))


class ModelStock(Strategy):
    name = "model_stock"
    summary = "Move from the base toward the branches' average by how much their edits agree."
    formula = (
        "c = mean_{i<j} cos(τ_i, τ_j); t = n·c / (1 + (n−1)·c); θ = t·mean_i θ_i + (1 − t)·θ_base"
    )
    parameters = (FILTER_WISE, LINES)
    presets = (None, "mergekit")
    min_branches = 2
    mergekit = "model_stock"
    job = ModelStockJob
