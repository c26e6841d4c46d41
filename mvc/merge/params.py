"""Merge parameters: one validated, immutable value shared by every strategy.

Validation happens at construction so a bad ``--density`` fails before any tensor is read,
with a one-line message naming the parameter. Per-branch values (weights, densities, TALL
lambdas) are given either once for all branches or once per branch, in branch order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mvc.errors import MvcError

PRESETS = (None, "mergekit", "peft", "paper")
CONSENSUS_SOURCES = ("sum", "ties")

PerBranch = float | tuple[float, ...]


def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise MvcError(f"{name} must be a finite number, got {value!r}")


def _values(value: PerBranch) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@dataclass(frozen=True)
class MergeParams:
    """Everything a strategy needs besides the tensors.

    ``density`` is TIES' trim density, DARE's keep probability and breadcrumbs' β;
    ``lambda_`` scales the merged task vector; ``k``/``alpha``/``tall_lambdas``/``on`` are
    consensus (TALL) parameters; ``tall_lambdas`` also define the lineage masks of every
    strategy; ``normalize=None`` means the strategy's (preset's) own default.
    """

    weights: PerBranch = 1.0
    density: PerBranch = 1.0
    lambda_: float = 1.0
    k: int | None = None
    tall_lambdas: PerBranch = 0.4
    alpha: float = 1.0
    gamma: float = 0.01
    t: float = 0.5
    seed: int = 0
    preset: str | None = None
    on: str = "sum"
    normalize: bool | None = None

    def __post_init__(self) -> None:
        for w in _values(self.weights):
            _finite("weight", w)
        for d in _values(self.density):
            _finite("density", d)
            if not 0.0 < d <= 1.0:
                raise MvcError(f"density must be in (0, 1], got {d}")
        for lam in _values(self.tall_lambdas):
            _finite("tall lambda", lam)
            if lam < 0:
                raise MvcError(f"tall lambda must be >= 0, got {lam}")
        for name in ("lambda_", "alpha", "gamma", "t"):
            _finite(name.rstrip("_"), getattr(self, name))
        if not 0.0 <= self.gamma < 1.0:
            raise MvcError(f"gamma must be in [0, 1), got {self.gamma}")
        if not 0.0 <= self.t <= 1.0:
            raise MvcError(f"t must be in [0, 1], got {self.t}")
        if self.k is not None and (
            not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0
        ):
            raise MvcError(f"k must be an integer >= 0, got {self.k!r}")
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**64
        ):
            raise MvcError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.preset not in PRESETS:
            raise MvcError(f"unknown preset {self.preset!r}", hint="use mergekit, peft or paper")
        if self.on not in CONSENSUS_SOURCES:
            raise MvcError(f"on must be 'sum' or 'ties', got {self.on!r}")

    def _per_branch(self, name: str, value: PerBranch, n: int) -> tuple[float, ...]:
        values = _values(value)
        if len(values) == 1:
            return values * n
        if len(values) != n:
            raise MvcError(f"{name} has {len(values)} values for {n} branches")
        return tuple(float(v) for v in values)

    def weights_for(self, n: int) -> tuple[float, ...]:
        return self._per_branch("weight", self.weights, n)

    def densities_for(self, n: int) -> tuple[float, ...]:
        return self._per_branch("density", self.density, n)

    def tall_lambdas_for(self, n: int) -> tuple[float, ...]:
        return self._per_branch("tall lambda", self.tall_lambdas, n)

    def k_for(self, n: int) -> int:
        """Consensus threshold: 1 for two branches (2 would drop every one-sided edit), else 2."""
        k = self.k if self.k is not None else (1 if n <= 2 else 2)
        if k > n:
            raise MvcError(f"k must be at most the number of branches ({n}), got {k}")
        return k

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict for merge records; ``from_record`` inverts it."""
        out = asdict(self)
        for key in ("weights", "density", "tall_lambdas"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MergeParams:
        unknown = set(record) - set(cls.__dataclass_fields__)
        if unknown:
            raise MvcError(f"unknown merge parameter(s): {', '.join(sorted(unknown))}")
        fixed = {
            key: tuple(value) if isinstance(value, list) else value for key, value in record.items()
        }
        return cls(**fixed)
