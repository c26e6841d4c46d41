"""The strategy registry: every merge rule by name (see docs/merge-semantics.md)."""

from __future__ import annotations

from mvc.errors import MvcError
from mvc.merge.strategies.base import (
    Chunk,
    ModelJob,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
    TensorStats,
)
from mvc.merge.strategies.breadcrumbs import Breadcrumbs
from mvc.merge.strategies.consensus import Consensus
from mvc.merge.strategies.dare_linear import DareLinear
from mvc.merge.strategies.dare_ties import DareTies
from mvc.merge.strategies.linear import Linear
from mvc.merge.strategies.sides import Ours, Theirs
from mvc.merge.strategies.slerp import Slerp
from mvc.merge.strategies.task_arithmetic import TaskArithmetic
from mvc.merge.strategies.ties import Ties

_REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Ties(),
        Consensus(),
        TaskArithmetic(),
        Linear(),
        DareTies(),
        DareLinear(),
        Breadcrumbs(),
        Slerp(),
        Ours(),
        Theirs(),
    )
}

STRATEGY_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; an unknown name is an error listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MvcError(
            f"unknown strategy {name!r}", hint=f"valid strategies: {', '.join(STRATEGY_NAMES)}"
        ) from None


__all__ = [
    "STRATEGY_NAMES",
    "Chunk",
    "ModelJob",
    "Step",
    "Strategy",
    "TensorJob",
    "TensorSpec",
    "TensorStats",
    "get_strategy",
]
