"""RAM and RAM+ (tensor-local), reinforced agent merging: unique edits kept whole, shared
ones averaged.

An element counts as changed by branch i when |τ_ij| > ``threshold`` (default 1e-5,
mergekit's ``epsilon``).
Where one branch alone changed it, θ_base + τ_ij; where c > 1 branches did, the plain mean
θ_base + Σ τ_ij / c over those. ``ramplus_tl`` also boosts each branch's unique edits by
λ_i = 1 + r·min(ρ_i, cap), ρ_i = (its shared elements) / max(its unique elements, ε), with
the counts taken over the tensor (mergekit 0.1.5's ``r`` and ``alpha``; here ``cap``).
Branch weights and λ do not enter, as in mergekit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mvc.merge.arrays import Array
from mvc.merge.declare import Param
from mvc.merge.lines import LINES
from mvc.merge.strategies.base import Chunk, Pass, Step, Strategy, TensorJob, TensorSpec

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams

THRESHOLD = Param(
    "threshold",
    float,
    1e-5,
    "RAM: |τ| above which a branch counts as having changed an element.",
    mergekit="epsilon",
    low=0.0,
    mergekit_default=1e-5,
)
R = Param(
    "r",
    float,
    0.1,
    "RAM+: strength of the boost of a branch's unique edits.",
    mergekit="r",
    low=0.0,
    mergekit_default=0.1,
)
CAP = Param(
    "cap",
    float,
    0.2,
    "RAM+: bound on the shared/unique ratio ρ that sets the boost.",
    mergekit="alpha",
    low=0.0,
    mergekit_default=0.2,
)


class _CountPass(Pass):
    def __init__(self, job: RamJob) -> None:
        self.job = job

    def update(self, chunk: Chunk) -> None:
        ops = chunk.ops
        changed, count = self.job.changed(chunk)
        for i, c in enumerate(changed):
            self.job.shared[i] += ops.count_nonzero(c & (count > 1))
            self.job.unique[i] += ops.count_nonzero(c & (count == 1))


class RamJob(TensorJob):
    plus: bool = False  # RAM+: boost the unique edits (one counting pass first)

    def __init__(self, params: MergeParams, spec: TensorSpec, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        self.epsilon = params.threshold
        n = spec.n_branches
        self.shared = [0] * n
        self.unique = [0] * n
        self.boost = [1.0] * n

    def changed(self, chunk: Chunk) -> tuple[tuple[Array, ...], Array]:
        ops = chunk.ops
        changed = tuple(m > self.epsilon for m in chunk.magnitudes())
        count = sum(
            (ops.astype(c, ops.int32) for c in changed[1:]), ops.astype(changed[0], ops.int32)
        )
        return changed, count

    def plan(self) -> Iterator[Pass]:
        if not self.plus:
            return
        yield _CountPass(self)
        p = self.params
        for i, (shared, unique) in enumerate(zip(self.shared, self.unique, strict=True)):
            rho = shared / max(unique, self.epsilon)
            self.boost[i] = 1 + p.r * min(max(rho, 0.0), p.cap)

    def step(self, chunk: Chunk) -> Step:
        ops = chunk.ops
        changed, count = self.changed(chunk)
        dtype = chunk.base_c.dtype
        unique = ops.astype(count == 1, dtype)
        overlap = ops.astype(count > 1, dtype)
        divisor = ops.astype(ops.maximum(count, 1), dtype)
        terms = []
        for tau, c, boost in zip(chunk.taus(), changed, self.boost, strict=True):
            z = tau * ops.astype(c, dtype)
            solo = z * unique * boost if self.plus else z * unique
            terms.append(solo + z * overlap / divisor)
        merged = sum(terms[1:], terms[0])
        return Step(out=chunk.base_c + merged, kept=changed)


class RamPlusJob(RamJob):
    plus = True


class Ram(Strategy):
    name = "ram"
    summary = "Keep edits only one branch made whole; average those several branches made."
    formula = (
        "c_j = #{i: |τ_ij| > threshold}; θ = θ_base + Σ_{changed} τ_ij · (1 if c_j = 1 else 1/c_j)"
    )
    parameters = (THRESHOLD, LINES)
    presets = (None, "mergekit")
    mergekit = "ram"
    job = RamJob


class RamPlusTl(Ram):
    name = "ramplus_tl"
    summary = "RAM with each branch's unique edits boosted by its share of overlap."
    formula = (
        "ρ_i = #shared_i / #unique_i; λ_i = 1 + r·min(ρ_i, cap); "
        "θ = θ_base + Σ unique λ_i·τ_ij + Σ shared τ_ij / c_j"
    )
    parameters = (THRESHOLD, R, CAP, LINES)
    mergekit = "ramplus_tl"
    job = RamPlusJob
