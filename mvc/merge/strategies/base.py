"""The chunked protocol every strategy follows, and the pieces they share.

A tensor reaches a strategy as a sequence of row chunks (dim 0), possibly several times:

    job = strategy.tensor_job(params, spec, model=context)
    while (p := job.next_pass()) is not None:   # statistics passes (thresholds, norms)
        for chunk in chunks(): p.update(chunk)
    for chunk in chunks(): out = job.combine(chunk)  # elementwise, any order
    stats = job.stats()

Passes only accumulate exact, order-free statistics (histogram counts, exact sums), and
``combine`` is a pure function of a chunk and those statistics, so the merged bytes do not
depend on chunk size, chunk order or device. Strategies whose statistics span the whole
model (``--preset paper``) expose a ``model_job`` with the same pass protocol over every
tensor's chunks (``update(spec, chunk)``); its ``context()`` is passed to each tensor job.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from mvc.errors import MvcError
from mvc.merge.arrays import Array, ArrayOps
from mvc.merge.declare import COMMON, Param
from mvc.merge.device import compute_dtype, is_mergeable
from mvc.merge.lines import LINES, lines_scale
from mvc.merge.masks import MaskPacker, tall_mask

if TYPE_CHECKING:  # MergeParams is built from the registry's declarations
    from mvc.merge.params import MergeParams


@dataclass(frozen=True)
class TensorSpec:
    """What a job knows about the tensor before seeing data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name (F32, BF16, ...)
    n_branches: int
    n_layers: int = 0  # numbered blocks in the whole model (LiNeS depth), 0 when unknown

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        return math.prod(self.shape[1:]) if self.shape else 1

    @property
    def compute_dtype(self) -> str:
        return compute_dtype(self.dtype)


@dataclass
class Chunk:
    """Rows [start, start + n) of the base and of each branch, already on the backend's device."""

    spec: TensorSpec
    start: int
    base: Array | None
    thetas: tuple[Array, ...]
    ops: ArrayOps
    tau_scale: float = 1.0  # LiNeS: the job scales this tensor's task vectors (set before use)

    @property
    def n_rows(self) -> int:
        return self.thetas[0].shape[0] if self.spec.shape else 1

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.n_rows == self.spec.rows

    @property
    def flat_start(self) -> int:
        return self.start * self.spec.row_numel

    @property
    def numel(self) -> int:
        return self.n_rows * self.spec.row_numel

    @cached_property
    def base_c(self) -> Array:
        """The base, flat, in the compute dtype."""
        if self.base is None:
            raise MvcError(f"strategy needs the merge base of {self.spec.name}")
        return self.ops.compute(self.base.reshape(-1), self.spec.dtype)

    @cached_property
    def thetas_c(self) -> tuple[Array, ...]:
        return tuple(self.ops.compute(t.reshape(-1), self.spec.dtype) for t in self.thetas)

    def taus(self) -> tuple[Array, ...]:
        """Task vectors τ_i = θ_i − θ_base, flat, in the compute dtype (cached per chunk)."""
        return self._taus

    @cached_property
    def _taus(self) -> tuple[Array, ...]:
        taus = tuple(t - self.base_c for t in self.thetas_c)
        if self.tau_scale != 1.0:
            taus = tuple(t * self.tau_scale for t in taus)
        return taus

    def magnitudes(self) -> tuple[Array, ...]:
        """|τ_i| (cached per chunk: trims, rank passes and TALL masks all need them)."""
        return self._magnitudes

    @cached_property
    def _magnitudes(self) -> tuple[Array, ...]:
        return tuple(abs(t) for t in self.taus())


@dataclass
class Step:
    """What a strategy computed for one chunk, before the single cast back.

    ``out`` is the merged value in the compute dtype; ``sole[i]`` marks elements whose
    merged value is mathematically θ_i (copied verbatim, avoiding a double rounding);
    ``kept``/``contributed`` feed the statistics; ``mtl`` is the multi-task vector the TALL
    masks compare against (None: the merged delta itself).
    """

    out: Array
    kept: tuple[Array, ...] | None = None
    contributed: tuple[Array, ...] | None = None
    signs: tuple[Array, ...] | None = None
    sole: tuple[Array, ...] | None = None
    mtl: Array | None = None


@dataclass
class TensorStats:
    """Per-tensor statistics for the merge record; counts are exact integers.

    ``changed[i]``: elements with τ_i ≠ 0; ``kept[i]``: nonzero after trim/drop;
    ``contributed[i]``: elements where branch i entered the merged value; ``conflicts``:
    elements where surviving edits disagree in sign; ``masks``: packed TALL masks.
    """

    name: str
    numel: int
    changed: list[int]
    kept: list[int]
    contributed: list[int]
    conflicts: int = 0
    masks: tuple[bytes, ...] | None = None

    def to_record(self) -> dict[str, Any]:
        """The counts: the record names the tensor already, and lineage keeps masks apart."""
        record = asdict(self)
        del record["name"], record["masks"]
        return record


class Pass(ABC):
    # A sampling pass gets correct results from any subset of the chunks (it only steers
    # how later passes work), so a streaming executor may feed it a few chunks instead of
    # decoding the whole tensor once more.
    sample: bool = False

    @abstractmethod
    def update(self, chunk: Chunk) -> None: ...


class ModelPass(ABC):
    @abstractmethod
    def update(self, spec: TensorSpec, chunk: Chunk) -> None: ...


class ModelJob(ABC):
    """Statistics over every tensor of the merge (for model-wide trims)."""

    def __init__(self) -> None:
        self._gen = self.plan()

    def next_pass(self) -> ModelPass | None:
        return next(self._gen, None)

    @abstractmethod
    def plan(self) -> Iterator[ModelPass]: ...

    @abstractmethod
    def context(self) -> Any: ...


class TensorJob(ABC):
    """One tensor's merge: statistics passes from :meth:`plan`, then :meth:`step` per chunk."""

    def __init__(self, params: MergeParams, spec: TensorSpec, *, masks: bool = False) -> None:
        self.params = params
        self.spec = spec
        n = spec.n_branches
        self.weights = params.weights_for(n)
        self._gen: Iterator[Pass] | None = None
        self._stats = TensorStats(spec.name, spec.numel, [0] * n, [0] * n, [0] * n)
        self._packers = [MaskPacker() for _ in range(n)] if masks else None
        self._lambdas = params.tall_lambdas_for(n)
        self.tau_scale = lines_scale(params.lines, spec.name, spec.n_layers)

    def plan(self) -> Iterator[Pass]:
        """Statistics passes; the default strategy needs none."""
        return iter(())

    @abstractmethod
    def step(self, chunk: Chunk) -> Step: ...

    def next_pass(self) -> Pass | None:
        if self._gen is None:
            self._gen = self.plan()
        current = next(self._gen, None)
        if current is None or self.tau_scale == 1.0:
            return current
        return _ScaledPass(current, self.tau_scale)

    def combine(self, chunk: Chunk) -> Array:
        """The merged rows of ``chunk`` in the tensor's dtype, with the chunk's shape."""
        ops = chunk.ops
        chunk.tau_scale = self.tau_scale
        result = self.step(chunk)
        out = ops.store(result.out, self.spec.dtype)
        if result.sole is not None and self.tau_scale == 1.0:
            for sole, theta in zip(result.sole, chunk.thetas, strict=True):
                out = ops.where(sole, theta.reshape(-1), out)
        self._account(chunk, result, out)
        shape = (chunk.n_rows, *self.spec.shape[1:]) if self.spec.shape else ()
        return out.reshape(shape)

    def _account(self, chunk: Chunk, result: Step, out: Array) -> None:
        ops = chunk.ops
        stats = self._stats
        taus = chunk.taus() if chunk.base is not None else None
        nonzero = [tau != 0 for tau in taus] if taus is not None else None
        kept = result.kept if result.kept is not None else nonzero
        contributed = result.contributed if result.contributed is not None else kept
        counted: dict[int, list[int]] = {}  # defaults alias the same masks: count them once
        for totals, masks in (
            (stats.changed, nonzero),
            (stats.kept, kept),
            (stats.contributed, contributed),
        ):
            if masks is None:
                continue
            if id(masks) not in counted:
                counted[id(masks)] = [ops.count_nonzero(m) for m in masks]
            for i, count in enumerate(counted[id(masks)]):
                totals[i] += count
        signs = result.signs if result.signs is not None else taus
        if signs is not None and len(signs) > 1:
            positive = signs[0] > 0
            negative = signs[0] < 0
            for s in signs[1:]:
                positive |= s > 0
                negative |= s < 0
            positive &= negative
            stats.conflicts += ops.count_nonzero(positive)
        if self._packers is not None and taus is not None:
            mtl = result.mtl
            if mtl is None:
                mtl = ops.compute(out, self.spec.dtype) - chunk.base_c
            magnitudes = chunk.magnitudes()
            for packer, tau, mag, lam in zip(
                self._packers, taus, magnitudes, self._lambdas, strict=True
            ):
                packer.feed(ops.to_numpy(tall_mask(tau, mag, mtl, lam)))

    def stats(self) -> TensorStats:
        if self._packers is not None and self.spec.n_branches:
            self._stats.masks = tuple(p.finish() for p in self._packers)
            self._packers = None
        return self._stats


class _ScaledPass(Pass):
    """A job's pass seeing the LiNeS-scaled task vectors its combine will see."""

    def __init__(self, inner: Pass, scale: float) -> None:
        self.inner = inner
        self.scale = scale
        self.sample = inner.sample

    def update(self, chunk: Chunk) -> None:
        chunk.tau_scale = self.scale
        self.inner.update(chunk)


class Strategy(ABC):
    """A named merge rule; stateless, so one instance serves every tensor.

    A subclass declares everything users and other tools see about it: ``summary`` (one
    help line), ``formula``, ``parameters`` (its :class:`Param` declarations, besides the
    ``COMMON`` ones every strategy takes; listing one of those too shows it in the recipe
    line, as consensus does with its TALL λ), ``presets``, how many branches it takes,
    whether it reads the merge base, and ``mergekit``/``mergekit_base`` (the mergekit
    method it exports as, None for none; whose model is mergekit's ``base_model``:
    ``"base"`` the merge base, ``"first"`` the first branch, ``"none"`` no base_model),
    and ``job``, the :class:`TensorJob` subclass that merges one tensor.
    See docs/architecture.md, "Adding a strategy".
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    formula: ClassVar[str]
    parameters: ClassVar[tuple[Param, ...]] = ()
    presets: ClassVar[tuple[str | None, ...]] = (None,)
    needs_base: ClassVar[bool] = True
    floats_only: ClassVar[bool] = True
    min_branches: ClassVar[int] = 1
    max_branches: ClassVar[int | None] = None
    mergekit: ClassVar[str | None] = None
    mergekit_base: ClassVar[str] = "base"
    # The job class built for each tensor as ``job(params, spec, masks=masks)``; a strategy
    # whose job needs more (the model context, which side it copies) overrides ``_job``.
    job: ClassVar[type[TensorJob]]

    @classmethod
    def declared(cls) -> tuple[Param, ...]:
        """Every parameter this strategy reads: the common ones, then its own."""
        return tuple(dict.fromkeys((*COMMON, *cls.parameters)))

    def check(self, params: MergeParams, n_branches: int) -> None:
        """Raise MvcError when ``params`` or the branch count do not fit this strategy."""
        if params.preset not in self.presets:
            valid = ", ".join(p for p in self.presets if p) or "none"
            raise MvcError(
                f"strategy {self.name} has no preset {params.preset!r}",
                hint=f"presets for {self.name}: {valid}",
            )
        if n_branches < self.min_branches or (
            self.max_branches is not None and n_branches > self.max_branches
        ):
            want = (
                f"exactly {self.min_branches}"
                if self.min_branches == self.max_branches
                else f"at least {self.min_branches}"
            )
            raise MvcError(f"strategy {self.name} needs {want} branches, got {n_branches}")
        for param in self.declared():
            if param.per_branch:
                params.for_branches(param.name, n_branches)
        if params.lines is not None and (LINES not in self.declared() or params.preset == "paper"):
            why = (
                "with --preset paper trims the whole model first"
                if LINES in self.declared()
                else "does not merge task vectors"
            )
            raise MvcError(
                f"--lines scales task vectors; strategy {self.name} {why}",
                hint="use a task-vector method (ties, task_arithmetic, della, tsv, ...)",
            )

    def check_tensor(self, spec: TensorSpec) -> None:
        if self.floats_only and not is_mergeable(spec.dtype):
            raise MvcError(
                f"strategy {self.name} cannot merge {spec.name} ({spec.dtype}); only floats",
                hint="use --strategy ours|theirs for that tensor",
            )

    def model_job(self, params: MergeParams, n_branches: int) -> ModelJob | None:
        """Whole-model statistics this strategy needs first (None: per tensor only)."""
        return None

    def tensor_job(
        self, params: MergeParams, spec: TensorSpec, model: Any = None, *, masks: bool = False
    ) -> TensorJob:
        self.check(params, spec.n_branches)
        self.check_tensor(spec)
        return self._job(params, spec, model, masks)

    def _job(self, params: MergeParams, spec: TensorSpec, model: Any, masks: bool) -> TensorJob:
        return self.job(params, spec, masks=masks)


def resolved_normalize(params: MergeParams, default: bool) -> bool:
    return default if params.normalize is None else params.normalize
