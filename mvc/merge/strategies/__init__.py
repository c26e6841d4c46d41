"""The strategy registry: every merge rule by name (see docs/merge-semantics.md).

A new strategy is one module under ``mvc/merge/strategies/`` and one line in the tuple
below (docs/architecture.md, "Adding a strategy"); everything else is derived from it.
"""

from __future__ import annotations

from mvc.errors import MvcError
from mvc.merge.declare import Param
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

_REGISTRY: dict[str, Strategy] = {}
# Every declared parameter by name (the union over strategies): one name, one declaration.
PARAMETERS: dict[str, Param] = {}


def register(strategy: Strategy) -> None:
    """Make ``strategy`` reachable by name; its declarations must agree with the others'
    (checked before anything is added, so a refused strategy leaves no trace)."""
    if strategy.name in _REGISTRY:
        raise ValueError(f"strategy {strategy.name} is registered twice")
    spellings = {p.spelling: p.name for p in PARAMETERS.values()}
    for param in strategy.declared():
        known = PARAMETERS.get(param.name)
        if known is not None and known != param:
            raise ValueError(f"{strategy.name} declares parameter {param.name} differently")
        if spellings.setdefault(param.spelling, param.name) != param.name:
            raise ValueError(f"{strategy.name}: {param.option} already names another parameter")
    for param in strategy.declared():
        PARAMETERS[param.name] = param
    _REGISTRY[strategy.name] = strategy


for _strategy in (
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
):
    register(_strategy)

STRATEGY_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def strategies() -> tuple[Strategy, ...]:
    """Every registered strategy, in registration order (`mvc merge --list-strategies`)."""
    return tuple(_REGISTRY.values())


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; an unknown name is an error listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MvcError(
            f"unknown strategy {name!r}", hint=f"valid strategies: {', '.join(STRATEGY_NAMES)}"
        ) from None


__all__ = [
    "PARAMETERS",
    "STRATEGY_NAMES",
    "Chunk",
    "ModelJob",
    "Step",
    "Strategy",
    "TensorJob",
    "TensorSpec",
    "TensorStats",
    "get_strategy",
    "register",
    "strategies",
]
