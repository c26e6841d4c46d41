"""The strategy registry: every merge rule by name (see docs/merge-semantics.md)."""

from __future__ import annotations

from mvc.errors import MvcError
from mvc.merge.strategies.arcee_fusion import ArceeFusion
from mvc.merge.strategies.base import (
    Chunk,
    ModelJob,
    Step,
    Strategy,
    TensorJob,
    TensorSpec,
    TensorStats,
)
from mvc.merge.strategies.breadcrumbs import Breadcrumbs, BreadcrumbsTies
from mvc.merge.strategies.consensus import Consensus
from mvc.merge.strategies.dare_linear import DareLinear
from mvc.merge.strategies.dare_ties import DareTies
from mvc.merge.strategies.della import Della, DellaLinear
from mvc.merge.strategies.karcher import Karcher
from mvc.merge.strategies.linear import Linear
from mvc.merge.strategies.model_stock import ModelStock
from mvc.merge.strategies.multislerp import MultiSlerp
from mvc.merge.strategies.nearswap import NearSwap
from mvc.merge.strategies.nuslerp import NuSlerp
from mvc.merge.strategies.pcb import Pcb
from mvc.merge.strategies.ram import Ram, RamPlusTl
from mvc.merge.strategies.sce import Sce
from mvc.merge.strategies.sides import Ours, Theirs
from mvc.merge.strategies.slerp import Slerp
from mvc.merge.strategies.svd import IsoC, IsoCts, Tsv
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
        BreadcrumbsTies(),
        Della(),
        DellaLinear(),
        Sce(),
        ModelStock(),
        NuSlerp(),
        MultiSlerp(),
        Karcher(),
        NearSwap(),
        ArceeFusion(),
        Ram(),
        RamPlusTl(),
        Tsv(),
        IsoC(),
        IsoCts(),
        Pcb(),
        Ours(),
        Theirs(),
    )
}

STRATEGY_NAMES: tuple[str, ...] = tuple(_REGISTRY)
DEFAULT_STRATEGY = "ties"


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; an unknown name is an error listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MvcError(
            f"unknown strategy {name!r}", hint=f"valid strategies: {', '.join(STRATEGY_NAMES)}"
        ) from None


__all__ = [
    "DEFAULT_STRATEGY",
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
