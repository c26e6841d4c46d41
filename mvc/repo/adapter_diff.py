"""`mvc diff` of PEFT LoRA adapters: per module, the change of its update ΔW = s·B·A.

The factors are not what an adapter means: (B·Q, Q⁻¹·A) is the same update for any
invertible Q (a merge or an SVD re-export writes exactly such a refactorisation), and a
change of A alone does nothing while B is zero (PEFT's init). Compared element by element,
lora_A and lora_B get both cases wrong. So each module is compared as ΔW, with each side's
own scale (alpha, rsLoRA, rank and alpha patterns): its relative Frobenius change and, when
the two sides have a merge base, the cosine and sign conflicts of their ΔW task vectors
against the base's ΔW (zero where the base has no such module), the figures that predict
how a merge of the two adapters behaves. A module whose factors changed but whose ΔW did not
beyond the rounding of the factors' dtype is ``refactored``.

Memory stays at one module's factors (r × in and out × r) plus a row block of ΔW: ΔW is
formed in float64 a few MiB at a time and never whole, so a 4096 × 4096 module costs a few
MiB, not 128. Numpy only, like the rest of `mvc diff`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mvc.errors import FormatError
from mvc.formats.numeric import to_float64
from mvc.formats.peft import LoraConfig, adapter_folder, config_path, layout
from mvc.repo.diff_stats import ChangeStats, TensorDiff
from mvc.repo.manifest import TensorEntry

if TYPE_CHECKING:
    from mvc.repo.diff import DiffReport, _Side, _Tensors

BLOCK_BYTES = 4 * 1024 * 1024
# A ΔW change under this many units of the factors' rounding (relative to its norm) is
# rounding of a refactorisation, not a change of the update.
ROUNDING_UNITS = 8
_EPS = {"F64": 2.0**-52, "F32": 2.0**-23, "F16": 2.0**-10, "BF16": 2.0**-7}


class _Adapter:
    """One version's adapter: config, and module -> (A, B) entries."""

    def __init__(self, side: _Side, path: str, tensors: _Tensors) -> None:
        folder = adapter_folder(path) or ""
        blob = side.read(config_path(folder))
        if blob is None:
            raise FormatError(f"{path} has no adapter_config.json next to it")
        self.side, self.path = side, path
        self.config = LoraConfig.parse(blob, config_path(folder))
        names = layout(tensors, path)
        self.modules = {m: (tensors[a][1], tensors[b][1]) for m, (a, b) in names.modules.items()}
        self.factor_names = {n for pair in names.modules.values() for n in pair}

    def identity(self, module: str) -> tuple:
        a, b = self.modules[module]
        return (a.chunk_ids, b.chunk_ids, a.dtype, b.dtype, self.config.scale_for(module))

    def shape(self, module: str) -> tuple[int, int]:
        a, b = self.modules[module]
        return (b.shape[0], a.shape[1])

    def factors(self, module: str) -> tuple[np.ndarray, np.ndarray]:
        """(s·B, A) in float64."""
        a, b = self.modules[module]
        return (
            self._load(b) * self.config.scale_for(module),
            self._load(a),
        )

    def _load(self, entry: TensorEntry) -> np.ndarray:
        data = b"".join(self.side.chunks(self.path, entry))
        return to_float64(data, entry.dtype).reshape(entry.shape)


def _open(side: _Side | None, path: str, tensors: _Tensors) -> _Adapter | None:
    if side is None or not tensors:
        return None
    return _Adapter(side, path, tensors)


def diff_adapter(
    report: DiffReport,
    path: str,
    a: _Side,
    b: _Side,
    base: _Side | None,
    old_t: _Tensors,
    new_t: _Tensors,
    base_t: _Tensors,
) -> tuple[_Tensors, _Tensors, _Tensors]:
    """Append one row per module of the adapter file ``path`` (ΔW compared) to ``report``,
    and hand back the tensors left for the ordinary diff (``modules_to_save``, biases).

    A file that is not an adapter's weights, or whose adapter mvc does not understand (an
    unsupported kind), is left whole to the ordinary per-tensor diff."""
    if adapter_folder(path) is None or not path.endswith(".safetensors"):
        return old_t, new_t, base_t
    try:
        old, new = _open(a, path, old_t), _open(b, path, new_t)
        anc = _open(base, path, base_t)
    except FormatError:
        return old_t, new_t, base_t
    if old is None and new is None:
        return old_t, new_t, base_t
    modules = sorted(set(old.modules if old else ()) | set(new.modules if new else ()))
    for module in modules:
        report.tensors.append(_module_diff(path, module, old, new, anc, base is not None))
    factors = set().union(*(x.factor_names for x in (old, new, anc) if x is not None))

    def rest(tensors: _Tensors) -> _Tensors:
        return {n: v for n, v in tensors.items() if n not in factors}

    return rest(old_t), rest(new_t), rest(base_t)


def _module_diff(
    path: str,
    module: str,
    old: _Adapter | None,
    new: _Adapter | None,
    base: _Adapter | None,
    has_base: bool,
) -> TensorDiff:
    """One module's row; ``has_base``: the sides have a merge base (whose ΔW is zero where
    ``base``, its adapter, lacks the module)."""
    if old is None or module not in old.modules:
        return TensorDiff(path, module, "added", kind="delta")
    if new is None or module not in new.modules:
        return TensorDiff(path, module, "deleted", kind="delta")
    if old.identity(module) == new.identity(module):
        return TensorDiff(path, module, "unchanged", 0.0, 0.0, kind="delta")
    if old.shape(module) != new.shape(module):
        return TensorDiff(path, module, "retyped", kind="delta")
    use_base = (
        base is not None and module in base.modules and base.shape(module) == old.shape(module)
    )
    acc = ChangeStats(with_base=has_base)
    tolerance = _tolerance(old, new, module)
    sb_old, a_old = old.factors(module)
    sb_new, a_new = new.factors(module)
    sb_base, a_base = base.factors(module) if use_base and base is not None else (None, None)
    rms = _frobenius(sb_old, a_old) / np.sqrt(sb_old.shape[0] * a_old.shape[1])
    rows = max(1, BLOCK_BYTES // (8 * a_old.shape[1]))
    for start in range(0, sb_old.shape[0], rows):
        stop = start + rows
        x = sb_old[start:stop] @ a_old
        y = sb_new[start:stop] @ a_new
        z = None
        if has_base:
            z = sb_base[start:stop] @ a_base if sb_base is not None else np.zeros_like(x)
        changed = int(np.count_nonzero(np.abs(y - x) > tolerance * rms))
        acc.add(x, y, z, changed)
    status = "changed" if acc.relative() > tolerance else "refactored"
    result = acc.result(path, module, status)
    result.kind = "delta"
    return result


def _frobenius(sb: np.ndarray, a: np.ndarray) -> float:
    """‖s·B·A‖_F from r × r Gram matrices: trace((BᵀB)(AAᵀ)), without forming ΔW."""
    return float(np.sqrt(max(np.sum((sb.T @ sb) * (a @ a.T)), 0.0)))


def _tolerance(old: _Adapter, new: _Adapter, module: str) -> float:
    dtypes = [e.dtype for side in (old, new) for e in side.modules[module]]
    return ROUNDING_UNITS * max(_EPS.get(d, 2.0**-23) for d in dtypes)
