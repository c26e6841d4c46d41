"""Merge parameters: one validated, immutable value shared by every strategy.

Which parameters exist, their defaults and their ranges come from the strategies'
declarations (:mod:`mvc.merge.declare`, gathered in ``mvc.merge.strategies.PARAMETERS``);
nothing here names a particular strategy's knob except the accessors kept for the
strategies' convenience. Validation happens at construction, so a bad ``--density`` fails
before any tensor is read, with a one-line message naming the parameter. Per-branch values
are given either once for all branches or once per branch, in branch order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mvc.errors import MvcError
from mvc.merge.declare import PRESETS, Param
from mvc.merge.strategies import PARAMETERS

__all__ = ["PRESETS", "MergeParams", "declaration"]


def declaration(key: str) -> Param:
    """The parameter a user's key names: its record name or its spelling (`lambda`, `weight`)."""
    for param in PARAMETERS.values():
        if key in param.aliases:
            return param
    raise MvcError(
        f"unknown merge parameter {key!r}",
        hint=f"known: {', '.join(sorted(p.spelling for p in PARAMETERS.values()))}",
    )


class MergeParams:
    """Everything a strategy needs besides the tensors: one value per declared parameter.

    Attributes are the declarations' names (``params.density``, ``params.lambda_``); a
    parameter not given takes its declared default.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(PARAMETERS))
        if unknown:
            raise MvcError(f"unknown merge parameter(s): {', '.join(unknown)}")
        checked = {}
        for name, param in PARAMETERS.items():
            checked[name] = param.check(values[name]) if name in values else param.default
        object.__setattr__(self, "_values", checked)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("MergeParams is immutable; use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MergeParams) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        changed = ", ".join(
            f"{k}={v!r}" for k, v in self._values.items() if v != PARAMETERS[k].default
        )
        return f"MergeParams({changed})"

    def replace(self, **changes: Any) -> MergeParams:
        return MergeParams(**{**self._values, **changes})

    def with_overrides(self, overrides: Mapping[str, Any]) -> MergeParams:
        """These parameters with a `--config` rule's values, keyed as users write them."""
        if not overrides:
            return self
        return self.replace(**{declaration(k).name: v for k, v in overrides.items()})

    # ------------------------------------------------------------------ per branch
    def for_branches(self, name: str, n: int) -> tuple[Any, ...]:
        """Per-branch parameter ``name`` as one value per branch."""
        return PARAMETERS[name].for_branches(self._values[name], n)

    def weights_for(self, n: int) -> tuple[float, ...]:
        return self.for_branches("weights", n)

    def densities_for(self, n: int) -> tuple[float, ...]:
        return self.for_branches("density", n)

    def tall_lambdas_for(self, n: int) -> tuple[float, ...]:
        return self.for_branches("tall_lambdas", n)

    def for_subset(self, branches: Sequence[int], n_total: int) -> MergeParams:
        """Per-branch values restricted to ``branches`` (those that changed one tensor)."""
        if len(branches) == n_total:
            return self
        return self.replace(
            **{
                p.name: tuple(self.for_branches(p.name, n_total)[i] for i in branches)
                for p in PARAMETERS.values()
                if p.per_branch
            }
        )

    def k_for(self, n: int) -> int:
        """Consensus threshold: 1 for two branches (2 would drop every one-sided edit), else 2."""
        k = self.k if self.k is not None else (1 if n <= 2 else 2)
        if k > n:
            raise MvcError(f"k must be at most the number of branches ({n}), got {k}")
        return k

    # ------------------------------------------------------------------ records
    def to_record(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """A JSON-ready dict of ``names`` (default: every parameter); ``from_record`` inverts it."""
        keys = list(self._values) if names is None else list(names)
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, self._values[k]) for k in keys)
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MergeParams:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def drop_branch(values: Mapping[str, Any], position: int, n: int) -> dict[str, Any]:
    """Per-branch lists with ``n`` entries lose entry ``position``; single values stay.

    ``values`` is keyed as a record or a `--config` rule keys it; other keys pass through.
    """
    out = dict(values)
    for key, value in values.items():
        per_branch = any(key in p.aliases and p.per_branch for p in PARAMETERS.values())
        if per_branch and isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = [v for i, v in enumerate(value) if i != position]
    return out
