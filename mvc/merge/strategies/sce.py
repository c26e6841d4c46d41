"""SCE (Wan et al. 2024, FuseChat): Select, Calculate, Erase — per tensor.

- Select: keep the elements whose task vectors vary most across branches: the top
  k = int(select_topk · #{var ≠ 0}) by population variance var_j = mean_i (τ_ij − τ̄_j)²
  (1 keeps everything). Ties go by index.
- Calculate: branch weights η_i = mean_j τ̂_ij² / Σ_i mean_j τ̂_ij² (uniform when the sum
  is below 1e-6), from exact sums over the tensor.
- Erase: TIES' sign election on Σ τ̂_i; θ = θ_base + Σ_i η_i m_i τ̂_i / max(Σ_i η_i m_i, 1e-6).

The branches' own weights and λ do not enter (as in the paper and mergekit).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mvc.merge.arrays import Array
from mvc.merge.declare import Param
from mvc.merge.exact import ExactSum
from mvc.merge.lines import LINES
from mvc.merge.select import Request, Selection, magnitude_keys
from mvc.merge.strategies.base import Chunk, Pass, Step, Strategy, TensorJob, TensorSpec

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


SELECT_TOPK = Param(
    "select_topk",
    float,
    1.0,
    "SCE: fraction of the elements that vary most across branches kept (1 keeps all).",
    mergekit="select_topk",
    low=0.0,
    high=1.0,
    low_open=True,
    mergekit_default=1.0,
)


def variance(chunk: Chunk) -> Array:
    """Population variance of the branches' τ per element (exactly 0 where all agree)."""
    taus = chunk.taus()
    n = len(taus)
    mean = sum(taus[1:], taus[0]) / n
    var = sum(((t - mean) * (t - mean) for t in taus[1:]), (taus[0] - mean) * (taus[0] - mean))
    var = var / n
    same = taus[0] == taus[0]
    for t in taus[1:]:
        same = same & (t == taus[0])
    return chunk.ops.where(same, chunk.ops.zeros_like(var, var.dtype), var)


class _CountPass(Pass):
    def __init__(self, fn) -> None:
        self.fn = fn

    def update(self, chunk: Chunk) -> None:
        self.fn(chunk)


class SceJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.density = params.select_topk
        self.selection: Selection | None = None
        self.eta: tuple[float, ...] = ()

    def plan(self) -> Iterator[Pass]:
        if self.density < 1:
            nonzero = [0]

            def count(chunk: Chunk) -> None:
                nonzero[0] += chunk.ops.count_nonzero(variance(chunk))

            yield _CountPass(count)
            k = int(nonzero[0] * self.density)
            self.selection = Selection(
                [Request(0, True, k)],
                self.spec.numel,
                self.spec.dtype,
                keys=lambda chunk: [magnitude_keys(chunk.ops, variance(chunk))],
            )
            yield from self.selection.passes()
        squares = [ExactSum() for _ in range(self.spec.n_branches)]

        def accumulate(chunk: Chunk) -> None:
            ops = chunk.ops
            for total, hat in zip(squares, self.selected(chunk), strict=True):
                wide = ops.to_numpy(ops.astype(hat, ops.float64))
                total.add(wide * wide, scratch=True)

        yield _CountPass(accumulate)
        numel = max(self.spec.numel, 1)
        means = [s.value() / numel for s in squares]
        total = sum(means)
        n = self.spec.n_branches
        self.eta = (
            tuple(1.0 / n for _ in means) if abs(total) < 1e-6 else tuple(m / total for m in means)
        )

    def selected(self, chunk: Chunk) -> tuple[Array, ...]:
        taus = chunk.taus()
        if self.selection is None:
            return taus
        ops = chunk.ops
        keep = self.selection.cuts[0].apply(
            ops, magnitude_keys(ops, variance(chunk)), chunk.flat_start
        )
        return tuple(t * keep for t in taus)

    def step(self, chunk: Chunk) -> Step:
        ops = chunk.ops
        hats = self.selected(chunk)
        total = sum(hats[1:], hats[0])
        elected = ops.astype(total >= 0, total.dtype) * 2 - 1
        agree = tuple(h * elected > 0 for h in hats)
        weights = [ops.astype(a, total.dtype) * e for a, e in zip(agree, self.eta, strict=True)]
        num = sum((h * w for h, w in zip(hats[1:], weights[1:], strict=True)), hats[0] * weights[0])
        den = ops.maximum(sum(weights[1:], weights[0]), 1e-6)
        return Step(
            out=chunk.base_c + num / den,
            kept=tuple(h != 0 for h in hats),
            contributed=agree,
            signs=hats,
        )


class Sce(Strategy):
    name = "sce"
    summary = "Select high-variance elements, weight branches by Σ τ², erase sign conflicts."
    formula = (
        "τ̂_i = τ_i ⊙ top(var_i τ, select_topk); η_i ∝ mean τ̂_i²; "
        "θ = θ_base + Σ_agree η_i·τ̂_i / Σ_agree η_i"
    )
    parameters = (SELECT_TOPK, LINES)
    presets = (None, "mergekit")
    mergekit = "sce"
    job = SceJob
