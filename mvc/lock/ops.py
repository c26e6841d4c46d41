"""Per-axis linear maps, the building blocks every MergeLock level is made of.

Each symmetry MergeLock uses acts on one axis of a tensor: a head's coordinates (attention),
the intermediate neurons (feed-forward), the hidden dimension (residual stream). A tensor's
transform is a list of such maps, one or more per axis; maps on different axes commute, and
maps on the same axis are applied in list order (fold a norm weight, then rotate). The
inverse applies the inverses in reverse order.

Everything runs in fp64 on a float64 copy of the tensor; the caller casts back once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def _along(t: torch.Tensor, axis: int, vector: torch.Tensor) -> torch.Tensor:
    """``vector`` shaped to broadcast along ``axis`` of ``t``."""
    shape = [1] * t.ndim
    shape[axis] = -1
    return vector.reshape(shape)


@dataclass(frozen=True)
class Blocks:
    """Block-diagonal d×d matrices along ``axis`` (attention heads): forward and inverse."""

    axis: int
    forward: np.ndarray  # [count, d, d]
    backward: np.ndarray

    def apply(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        mats = torch.from_numpy(self.backward if inverse else self.forward)
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
        scale = None if self.scale is None else _along(t, self.axis, torch.from_numpy(self.scale))
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
        s = _along(t, self.axis, torch.from_numpy(self.scale))
        return t / s if inverse else t * s


@dataclass(frozen=True)
class Dense:
    """x' = M x along ``axis`` for an orthogonal M (the inverse is Mᵀ)."""

    axis: int
    matrix: np.ndarray

    def apply(self, t: torch.Tensor, inverse: bool) -> torch.Tensor:
        m = torch.from_numpy(self.matrix)
        m = m.T if inverse else m
        if self.axis == t.ndim - 1:
            return t @ m.T
        moved = t.movedim(self.axis, 0)
        return (m @ moved.reshape(m.shape[0], -1)).reshape(moved.shape).movedim(0, self.axis)


AxisOp = Blocks | Permute | Scale | Dense


def transform(tensor: torch.Tensor, ops: Sequence[AxisOp], inverse: bool) -> torch.Tensor:
    """``tensor`` with ``ops`` applied (or undone) in fp64, cast back to its dtype once."""
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"cannot transform a {tensor.dtype} tensor")
    t = tensor.detach().to(device="cpu", dtype=torch.float64)
    for op in reversed(ops) if inverse else ops:
        t = op.apply(t, inverse)
    return t.to(tensor.dtype).contiguous()
