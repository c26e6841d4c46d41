"""How a strategy declares its parameters: one :class:`Param` per knob, written once.

Everything users see about a parameter is derived from its declaration: the `mvc merge`
option and its help, the range check with its one-line error, the `--config` rule key, the
merge record's entry, the `mvc log` recipe line, the mergekit YAML key and whether
`mvc unmerge` drops an entry with the branch. A parameter that several strategies take
(``weights``, ``density``, ``lambda_`` ...) is declared once here and listed by each of
them, so one name always means one thing; a strategy whose default differs declares
``optional=True`` with ``None`` meaning "the strategy's (preset's) own default", as
``normalize`` and ``k`` do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mvc.errors import MvcError

PRESETS: tuple[str | None, ...] = (None, "mergekit", "peft", "paper")
_OMIT = object()  # mergekit_default when mergekit has no default worth omitting


@dataclass(frozen=True)
class Param:
    """One parameter: its name in the record and code, type, default, range and help.

    ``low``/``high`` bound numbers (``low_open``/``high_open`` exclude the bound);
    ``choices`` bound strings. ``per_branch`` values are given once for all branches or
    once per merged branch, in branch order. ``flag`` is how users spell it (CLI option
    ``--flag``, `--config` key), the name itself by default. ``mergekit`` is mergekit's
    key for it (None: mergekit has no such parameter; the mergekit export leaves it out),
    and ``mergekit_default`` a value mergekit assumes, left out of the export too.
    ``by_name``: the CLI also takes ``NAME=V`` per branch (`--weight math=0.7`).
    ``unset`` says what ``None`` means for an optional parameter (help and listings).
    ``size`` > 1 makes the value a tuple of that many numbers, each in the range, which
    users write comma-separated (``--lines 0.2,0.8``).
    """

    name: str
    kind: type
    default: Any
    help: str
    mergekit: str | None
    per_branch: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    flag: str | None = None
    mergekit_default: Any = _OMIT
    by_name: bool = False
    unset: str = "the strategy's own"  # what None means, for an optional parameter
    size: int = 1  # > 1: a fixed number of values, written A,B (LiNeS' α,β)

    @property
    def spelling(self) -> str:
        """The user's name: `--config` key (and, with dashes, the CLI option)."""
        return self.flag or self.name

    @property
    def option(self) -> str:
        return "--" + self.spelling.replace("_", "-")

    @property
    def title(self) -> str:
        """How listings show it: the record name, without Python's keyword underscore."""
        return self.name.rstrip("_")

    @property
    def label(self) -> str:
        """How errors name it ("tall lambda must be >= 0")."""
        return self.spelling.replace("_", " ")

    @property
    def aliases(self) -> tuple[str, ...]:
        """Keys a `--config` rule may use for it."""
        return tuple(dict.fromkeys((self.spelling, self.name)))

    def omitted_in_mergekit(self, value: Any) -> bool:
        return value is None or (self.mergekit_default is not _OMIT and value == self.mergekit_default)

    def range_text(self) -> str:
        """The valid values, as the error and the help print them."""
        if self.size > 1:
            return f"{self.size} numbers A,B, each {self._range_one()}"
        return self._range_one()

    def _range_one(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.low is None and self.high is None:
            return "any finite number" if self.kind is float else "any integer"
        prefix = "an integer " if self.kind is int else ""
        if self.high is None:
            return f"{prefix}{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{prefix}{'<' if self.high_open else '<='} {_num(self.high)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"{prefix}in {left}{_num(self.low)}, {_num(self.high)}{right}"

    def check(self, value: Any) -> Any:
        """The value, normalised (per-branch lists become tuples); MvcError when invalid."""
        if value is None:
            if self.optional:
                return None
            raise MvcError(f"{self.label} needs a value")
        if self.size > 1:
            return self._several(value)
        if self.per_branch and isinstance(value, (list, tuple)):
            if not value:
                raise MvcError(f"{self.label} needs at least one value")
            return tuple(self._one(v) for v in value)
        return self._one(value)

    def _several(self, value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            try:
                value = [float(v) for v in value.split(",")]
            except ValueError:
                raise MvcError(f"{self.label} takes {self.size} numbers A,B, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            self._one(value)  # a bad number says so first
        if not isinstance(value, (list, tuple)) or len(value) != self.size:
            raise MvcError(f"{self.label} takes {self.size} numbers A,B, got {value!r}")
        return tuple(self._one(v) for v in value)

    def _one(self, value: Any) -> Any:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise MvcError(f"{self.label} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if value not in self.choices:
                raise MvcError(f"{self.label} must be {self.range_text()}, got {value!r}")
            return value
        if self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or not self._in_range(value):
                raise MvcError(f"{self.label} must be {self.range_text()}, got {value!r}")
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise MvcError(f"{self.label} must be a finite number, got {value!r}")
        if not self._in_range(value):
            raise MvcError(f"{self.label} must be {self.range_text()}, got {value}")
        return value

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def for_branches(self, value: Any, n: int) -> tuple[Any, ...]:
        """A per-branch value as one entry per branch (a single value is repeated)."""
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if len(values) == 1:
            return values * n
        if len(values) != n:
            raise MvcError(f"{self.label} has {len(values)} values for {n} branches")
        return tuple(float(v) if self.kind is float else v for v in values)


def _num(value: float | None) -> str:
    return "2**64" if value == 2**64 else f"{value:g}"


# ---------------------------------------------------------------- shared declarations
# Every strategy takes these two: the preset (checked against the strategy's own list) and
# the TALL mask λ, which also defines the lineage masks of every merge.
PRESET = Param(
    "preset",
    str,
    None,
    "Reproduce a trusted tool's arithmetic exactly.",
    mergekit=None,
    choices=tuple(p for p in PRESETS if p),
    optional=True,
    unset="mvc's own arithmetic",
)
TALL_LAMBDA = Param(
    "tall_lambdas",
    float,
    0.4,
    "TALL mask λ (consensus and lineage masks); once or per branch.",
    mergekit=None,
    per_branch=True,
    low=0.0,
    flag="tall_lambda",
)
COMMON: tuple[Param, ...] = (PRESET, TALL_LAMBDA)

WEIGHT = Param(
    "weights",
    float,
    1.0,
    "Branch weight: W per branch in order, or NAME=W.",
    mergekit="weight",
    per_branch=True,
    flag="weight",
    by_name=True,
)
DENSITY = Param(
    "density",
    float,
    1.0,
    "Kept fraction (TIES trim, DARE keep, breadcrumbs β); once or per branch.",
    mergekit="density",
    per_branch=True,
    low=0.0,
    high=1.0,
    low_open=True,
)
LAMBDA = Param(
    "lambda_",
    float,
    1.0,
    "Scale of the merged task vector.",
    mergekit="lambda",
    flag="lambda",
    mergekit_default=1.0,
)
NORMALIZE = Param(
    "normalize",
    bool,
    None,
    "Divide by the sum of the weights (default: the strategy's and preset's own choice).",
    mergekit="normalize",
    optional=True,
)
SEED = Param(
    "seed",
    int,
    0,
    "Seed of random drops (the same seed, the same drops on any device).",
    mergekit=None,
    low=0,
    high=2**64,
    high_open=True,
)
