"""``ours`` and ``theirs``: take one branch's tensor verbatim, any dtype, no arithmetic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mvc.merge.arrays import Array
from mvc.merge.declare import PRESETS
from mvc.merge.strategies.base import Chunk, Step, Strategy, TensorJob, TensorSpec

if TYPE_CHECKING:
    from mvc.merge.params import MergeParams


class SideJob(TensorJob):
    def __init__(self, params: MergeParams, spec: TensorSpec, side: int) -> None:
        super().__init__(params, spec)
        self.side = side

    def step(self, chunk: Chunk) -> Step:
        raise TypeError("ours/theirs compute nothing: combine() hands the side through")

    def combine(self, chunk: Chunk) -> Array:
        """The chosen side's stored values as they are (no cast: any dtype, exact bytes).

        Only that side contributes; integer tensors have no task vectors to count.
        """
        self._stats.contributed[self.side] += chunk.numel
        return chunk.thetas[self.side]


class Ours(Strategy):
    name = "ours"
    summary = "Take HEAD's tensor as it is (any dtype, exact bytes)."
    formula = "θ = θ_HEAD"
    presets = PRESETS
    needs_base = False
    floats_only = False

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return SideJob(params, spec, 0)


class Theirs(Strategy):
    name = "theirs"
    summary = "Take the other branch's tensor as it is (two branches, any dtype)."
    formula = "θ = θ_theirs"
    presets = PRESETS
    needs_base = False
    floats_only = False
    min_branches = 2
    max_branches = 2

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return SideJob(params, spec, 1)
