"""Per-axis linear maps, the building blocks every MergeLock level is made of.

Each symmetry MergeLock uses acts on one axis of a tensor: a head's coordinates (attention),
the intermediate neurons (feed-forward), the hidden dimension (residual stream). A tensor's
transform is a list of such maps, one or more per axis; maps on different axes commute, and
maps on the same axis are applied in list order (fold a norm weight, then rotate). The
inverse applies the inverses in reverse order.

Arithmetic and memory (``transform``): a tensor is computed in window slices along an axis
that none of its maps touches, each slice cast back to the tensor's dtype once, so no
full-size working copy exists (the 32000 × 2048 embedding of a 1B model would be 0.5 GB in
fp64). A 2-D matrix with maps on both axes is done in two windowed passes (maps on different
axes commute) through one working copy. The working precision is fp64 for fp32/fp64 tensors
and fp32 for 16-bit ones: fp32's rounding (2^-24, about 1e-6 after a 2048-term dot product)
is thousands of times below the one bf16/fp16 rounding the cast adds anyway, and fp32
matrix products run twice as fast. Window boundaries depend only on the tensor's shape, so
the result is the same on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

WINDOW_BYTES = 16 * 1024 * 1024  # working-precision bytes per slice


def _along(t: torch.Tensor, axis: int, vector: torch.Tensor) -> torch.Tensor:
    """``vector`` shaped to broadcast along ``axis`` of ``t``."""
    shape = [1] * t.ndim
    shape[axis] = -1
    return vector.reshape(shape)


def _vector(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values).to(t.dtype)


@dataclass(frozen=True)
class Blocks:
    """Block-diagonal d×d matrices along ``axis`` (attention heads): forward and inverse.

    Block i uses matrix ``index[i]`` of the [distinct, d, d] stacks that ``matrices()``
    derives (from the key) when the map is applied. A plan that held them would grow with
    the model: 8 role matrices per KV head and layer are 0.7 GB of fp64 for a 70B model.
    """

    axis: int
    index: np.ndarray  # [count] int64
    matrices: Callable[[], tuple[np.ndarray, np.ndarray]]  # (forward, inverse) stacks

    def apply(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        forward, backward = self.matrices()
        distinct = torch.from_numpy(backward if inverse else forward).to(t.dtype)
        mats = distinct[torch.from_numpy(self.index)]
        count, d, _ = mats.shape
        moved = t.movedim(self.axis, 0)
        result = torch.bmm(mats, moved.reshape(count, d, -1))
        return result.reshape(moved.shape).movedim(0, self.axis)


@dataclass(frozen=True)
class Permute:
    """x'_i = scale_i · x_{perm_i}: a permutation, optionally signed or positively scaled."""

    axis: int
    perm: np.ndarray
    scale: np.ndarray | None = None

    def apply(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        perm = torch.from_numpy(self.perm)
        scale = None if self.scale is None else _along(t, self.axis, _vector(self.scale, t))
        if not inverse:
            out = t.index_select(self.axis, perm)
            return out if scale is None else out * scale
        source = t if scale is None else t / scale
        return torch.empty_like(t).index_copy_(self.axis, perm, source)


@dataclass(frozen=True)
class Scale:
    """x'_i = s_i · x_i: a norm weight folded into the linear layer that reads the norm."""

    axis: int
    scale: np.ndarray

    def apply(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        s = _along(t, self.axis, _vector(self.scale, t))
        return t / s if inverse else t * s


@dataclass(frozen=True)
class Dense:
    """x' = M x along ``axis`` for an orthogonal M (the inverse is Mᵀ)."""

    axis: int
    matrix: np.ndarray

    def apply(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        m = torch.from_numpy(self.matrix).to(t.dtype)
        m = m.T if inverse else m
        if self.axis == t.ndim - 1:
            return t @ m.T
        moved = t.movedim(self.axis, 0)
        return (m @ moved.reshape(m.shape[0], -1)).reshape(moved.shape).movedim(0, self.axis)


AxisOp = Blocks | Permute | Scale | Dense


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for 16-bit tensors, fp64 otherwise (see the module docstring for why)."""
    return torch.float32 if torch.finfo(dtype).bits <= 16 else torch.float64


def _windowed(
    source: torch.Tensor,
    ops: Sequence[AxisOp],
    inverse: bool,
    axis: int,
    target: torch.Tensor,
    work: torch.dtype,
) -> None:
    """``target`` ← ``ops`` applied to ``source``, slice by slice along ``axis`` (which no
    op in ``ops`` touches, so slices are independent)."""
    length = source.shape[axis]
    per_index = max(1, source.numel() // max(1, length)) * torch.finfo(work).bits // 8
    step = max(1, WINDOW_BYTES // per_index)
    for start in range(0, length, step):
        count = min(step, length - start)
        t = source.narrow(axis, start, count).to(work)
        for op in ops:
            t = op.apply(t, inverse)
        target.narrow(axis, start, count).copy_(t)


def transform(tensor: torch.Tensor, ops: Sequence[AxisOp], inverse: bool) -> torch.Tensor:
    """``tensor`` with ``ops`` applied (or undone), each element cast back to its dtype once."""
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"cannot transform a {tensor.dtype} tensor")
    source = tensor.detach().to("cpu")
    work = working_dtype(source.dtype)
    ordered = list(reversed(ops)) if inverse else list(ops)
    out = torch.empty(source.shape, dtype=source.dtype)
    touched = {op.axis for op in ordered}
    free = [a for a in range(source.ndim) if a not in touched]
    if free:
        _windowed(source, ordered, inverse, free[0], out, work)
    elif source.ndim == 2:
        middle = torch.empty(source.shape, dtype=work)
        _windowed(source, [op for op in ordered if op.axis == 1], inverse, 0, middle, work)
        _windowed(middle, [op for op in ordered if op.axis == 0], inverse, 1, out, work)
    else:  # vectors (norm weights, biases) and tensors mixed on every axis: small
        t = source.to(work)
        for op in ordered:
            t = op.apply(t, inverse)
        out.copy_(t)
    return out
