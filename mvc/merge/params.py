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
    # The methods below read these; None means the strategy's own default.
    epsilon: float | None = None  # DELLA's rank spread ε (0.15), RAM's "changed" cut (1e-5)
    rescale: bool | None = None  # DELLA: undo the drop's shrinkage (mergekit: L1 per tensor)
    filter_wise: bool = False  # model_stock: one ratio per output row
    row_wise: bool = False  # nuslerp: interpolate columns (dim 0) instead of rows
    flatten: bool = True  # nuslerp: one angle for the whole tensor
    max_iter: int = 10  # karcher
    tol: float = 1e-5  # karcher
    r: float = 0.1  # ramplus_tl: strength of the shared-element boost
    cap: float = 0.2  # ramplus_tl: bound on the overlap ratio ρ (mergekit's alpha)
    common: float = 0.8  # iso_cts: fraction of the spectrum kept as the common subspace
    lines: tuple[float, float] | None = None  # LiNeS (α, β): τ scaled by α + β·depth

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
        self._check_method_fields()
        if self.on not in CONSENSUS_SOURCES:
            raise MvcError(f"on must be 'sum' or 'ties', got {self.on!r}")

    def _check_method_fields(self) -> None:
        if self.epsilon is not None:
            _finite("epsilon", self.epsilon)
            if self.epsilon < 0:
                raise MvcError(f"epsilon must be >= 0, got {self.epsilon}")
        for name in ("tol", "r", "cap", "common"):
            _finite(name, getattr(self, name))
        if self.tol <= 0:
            raise MvcError(f"tol must be > 0, got {self.tol}")
        if self.r < 0 or self.cap < 0:
            raise MvcError(f"r and cap must be >= 0, got r={self.r}, cap={self.cap}")
        if not 0.0 <= self.common <= 1.0:
            raise MvcError(f"common must be in [0, 1], got {self.common}")
        if not isinstance(self.max_iter, int) or isinstance(self.max_iter, bool) or not (
            1 <= self.max_iter <= 1000
        ):
            raise MvcError(f"max_iter must be an integer in [1, 1000], got {self.max_iter!r}")
        if self.lines is not None:
            if not isinstance(self.lines, tuple) or len(self.lines) != 2:
                raise MvcError(f"lines must be two numbers ALPHA,BETA, got {self.lines!r}")
            for v in self.lines:
                _finite("lines", v)
                if v < 0:
                    raise MvcError(f"lines values must be >= 0, got {v}")

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
        for key in ("weights", "density", "tall_lambdas", "lines"):
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
