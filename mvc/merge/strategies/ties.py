"""TIES: trim each task vector to its largest magnitudes, elect a sign, average the agreeing.

Presets differ only in arithmetic details, each matching a tool users trust:

- default / ``mergekit``: keep exactly k = max(1, int(density·N)) per tensor; weights enter
  the election (sign of Σ w_i·τ̂_i, a zero sum electing +) and the mean is weighted
  (Σ w_i·τ̂_i over agreeing / Σ w_i over agreeing). The default additionally copies θ_i
  verbatim where branch i is the only contributor and λ = 1 (the same value mathematically,
  without the double rounding of subtracting and re-adding the base).
- ``peft``: k = int(density·N); unweighted election; Σ w_i·τ̂_i over agreeing divided by the
  *count* of agreeing branches.
- ``paper``: trim across the whole model (keep fp32 |τ| ≥ the model-wide (int(density·N)+1)-th
  largest, as the paper's code does); unweighted election where a zero sum takes the
  model-wide majority sign; mean by count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mvc.merge.arrays import Array, ArrayOps, NumpyOps
from mvc.merge.declare import DENSITY, LAMBDA, NORMALIZE, WEIGHT
from mvc.merge.lines import LINES
from mvc.merge.select import (
    INDEX_ORDER,
    TORCH_ORDER,
    Cut,
    RankQuery,
    Request,
    Selection,
    magnitude_keys,
)
from mvc.merge.strategies.base import (
    Chunk,
    ModelJob,
    ModelPass,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
    resolved_normalize,
)

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


def trim_count(density: float, numel: int, preset: str | None) -> int:
    """How many elements a per-tensor magnitude trim keeps."""
    if density >= 1.0:
        return numel
    k = int(density * numel)
    if preset != "peft":
        k = max(1, k)  # mergekit keeps at least one element of a nonempty tensor
    return min(k, numel)


@dataclass
class Election:
    """Result of the sign election and disjoint mean over trimmed task vectors."""

    delta: Array
    agree: tuple[Array, ...]
    sole: tuple[Array, ...] | None


def elect_and_merge(
    ops: ArrayOps,
    hats: tuple[Array, ...],
    weights: tuple[float, ...],
    *,
    preset: str | None,
    normalize: bool,
    zero_sign: float = 1.0,
) -> Election:
    """Sign election + disjoint merge of trimmed task vectors ``hats`` (no λ applied).

    ``preset`` None/mergekit: weighted election and weighted mean (mean only when
    ``normalize``); peft/paper: unweighted election, weighted sum over the count agreeing.
    ``zero_sign`` is the sign a zero election sum takes (paper: the model-wide majority).
    """
    if preset in (None, "mergekit"):
        voters = [h * w for h, w in zip(hats, weights, strict=True)]  # weights enter the election
    else:
        voters = list(hats)
    total = _sum(voters)
    positive = total > 0 if zero_sign < 0 else total >= 0
    # v agrees with the elected sign s = ±1 iff v·s > 0 (exact; false for 0 and NaN), which
    # is where(positive, v > 0, v < 0) at a fraction of the cost.
    elected = ops.astype(positive, total.dtype) * 2 - 1
    agree = tuple(v * elected > 0 for v in voters)
    masks = [ops.astype(a, total.dtype) for a in agree]
    if preset in (None, "mergekit"):
        num = _sum([v * m for v, m in zip(voters, masks, strict=True)])
        if not normalize:
            return Election(num, agree, None)
        den = _sum([m * w for m, w in zip(masks, weights, strict=True)])
        den = den + (den == 0)  # 0 -> 1 (where nobody agrees, the numerator is 0 too)
        count = _sum(masks)
        return Election(num / den, agree, tuple(a & (count == 1) for a in agree))
    num = _sum([h * w * m for h, w, m in zip(hats, weights, masks, strict=True)])
    return Election(num / ops.maximum(_sum(masks), 1.0), agree, None)


def _sum(tensors: list[Array]) -> Array:
    """Left-to-right sum, the order torch uses when reducing a stacked dim 0."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def apply_lambda(base: Array, delta: Array, lam: float) -> Array:
    """θ_base + λ·δ, multiplying only when λ ≠ 1 (as mergekit does, for identical rounding)."""
    return base + (delta * lam if lam != 1 else delta)


class TiesJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, context: Any, masks: bool) -> None:
        super().__init__(params, spec, masks=masks)
        n = spec.n_branches
        self.preset = params.preset
        self.normalize = resolved_normalize(params, True)
        self.context: PaperContext | None = context
        self.selection = Selection(
            [
                Request(i, True, trim_count(d, spec.numel, self.preset))
                for i, d in enumerate(params.densities_for(n))
            ],
            spec.numel,
            spec.dtype,
            tie_order=TORCH_ORDER if self.preset == "mergekit" else INDEX_ORDER,
        )

    def plan(self) -> Iterator:
        if self.context is None:
            yield from self.selection.passes()

    def trimmed(self, chunk: Chunk) -> tuple[Array, ...]:
        """τ̂_i: each task vector with everything outside its kept set zeroed."""
        ops, taus = chunk.ops, chunk.taus()
        as_fp32 = self.context is not None
        cuts = self.context.cuts if self.context is not None else self.selection.cuts
        return tuple(
            tau * cut.apply(ops, magnitude_keys(ops, mag, as_fp32=as_fp32), chunk.flat_start)
            for tau, mag, cut in zip(taus, chunk.magnitudes(), cuts, strict=True)
        )

    def elect(self, ops: ArrayOps, hats: tuple[Array, ...]) -> Election:
        zero_sign = self.context.majority if self.context is not None else 1.0
        return elect_and_merge(
            ops,
            hats,
            self.weights,
            preset=self.preset,
            normalize=self.normalize,
            zero_sign=zero_sign,
        )

    def combine(self, chunk: Chunk) -> Array:
        """On numpy, the same bits in few passes (:mod:`ties_numpy`); else the generic step."""
        if (
            isinstance(chunk.ops, NumpyOps)
            and self.context is None
            and self.preset in (None, "mergekit")
            and self.tau_scale == 1.0
            and chunk.base is not None
        ):
            from mvc.merge.strategies import ties_numpy

            return ties_numpy.combine(self, chunk)
        return super().combine(chunk)

    def step(self, chunk: Chunk) -> Step:
        hats = self.trimmed(chunk)
        election = self.elect(chunk.ops, hats)
        lam = self.params.lambda_
        exact = self.preset is None and lam == 1
        return Step(
            out=apply_lambda(chunk.base_c, election.delta, lam),
            kept=tuple(h != 0 for h in hats),
            contributed=election.agree,
            signs=hats,
            sole=election.sole if exact else None,
        )


@dataclass(frozen=True)
class PaperContext:
    """Model-wide statistics of the paper preset: per-branch cuts on fp32 |τ| and the majority sign."""

    cuts: tuple[Cut, ...]
    majority: float


class _FnPass(ModelPass):
    def __init__(self, fn) -> None:
        self._fn = fn

    def update(self, spec: TensorSpec, chunk: Chunk) -> None:
        self._fn(spec, chunk)


class PaperModelJob(ModelJob):
    """Model-wide trim thresholds over fp32 |τ_i| of all tensors, and the majority sign."""

    def __init__(self, params: MergeParams, specs: list[TensorSpec]) -> None:
        self.specs = specs
        self.n = specs[0].n_branches if specs else 0
        self.densities = params.densities_for(self.n) if self.n else ()
        self._context: PaperContext | None = None
        super().__init__()

    def plan(self) -> Iterator[ModelPass]:
        total = sum(spec.numel for spec in self.specs)
        # As the paper's code: keep |τ| >= the (int(d·N) + 1)-th largest over the model.
        queries = {
            i: RankQuery(int(d * total), 32, total)
            for i, d in enumerate(self.densities)
            if d < 1 and total
        }

        def feed(spec: TensorSpec, chunk: Chunk) -> None:
            for i, mag in enumerate(chunk.magnitudes()):
                if i in queries:
                    keys = magnitude_keys(chunk.ops, mag, as_fp32=True)
                    queries[i].update(chunk.ops, keys, False)

        while not all(q.done for q in queries.values()):
            yield _FnPass(feed)
            for q in queries.values():
                q.end_pass()
        cuts = [
            Cut(above=True, value=q.value, take=q.n_equal, n_equal=q.n_equal)
            if (q := queries.get(i)) is not None
            else Cut.everything()
            for i in range(self.n)
        ]
        balance = [0]

        def vote(spec: TensorSpec, chunk: Chunk) -> None:
            ops = chunk.ops
            hats = [
                tau * cut.apply(ops, magnitude_keys(ops, mag, as_fp32=True), chunk.flat_start)
                for tau, mag, cut in zip(chunk.taus(), chunk.magnitudes(), cuts, strict=True)
            ]
            s = sum(hats[1:], hats[0])
            balance[0] += ops.count_nonzero(s > 0) - ops.count_nonzero(s < 0)

        if self.n:
            yield _FnPass(vote)
        self._context = PaperContext(tuple(cuts), 1.0 if balance[0] >= 0 else -1.0)

    def context(self) -> PaperContext:
        if self._context is None:
            raise RuntimeError("model statistics requested before their passes ran")
        return self._context


class Ties(Strategy):
    name = "ties"
    summary = "Trim each task vector to its largest |τ|, elect a sign, average the agreeing."
    formula = (
        "τ̂_i = τ_i ⊙ top(|τ_i|, density); s = sign Σ w_i·τ̂_i; "
        "θ = θ_base + λ·Σ_{sign τ̂_i = s} w_i·τ̂_i / Σ_{sign τ̂_i = s} w_i"
    )
    parameters = (DENSITY, WEIGHT, LAMBDA, NORMALIZE, LINES)
    presets = (None, "mergekit", "peft", "paper")
    mergekit = "ties"

    def model_job(self, params: MergeParams, specs: list[TensorSpec]) -> ModelJob | None:
        return PaperModelJob(params, specs) if params.preset == "paper" else None

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        if params.preset == "paper" and model is None:
            raise RuntimeError("the paper preset needs the model job's context")
        return TiesJob(params, spec, model, masks)
