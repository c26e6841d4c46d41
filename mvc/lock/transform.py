"""The MergeLock transform itself: a pure function of tensors, config and key.

Per KV head with matrices A (queries/keys) and B (values/output), in the torch convention
y = W x + b:  W_Q ← A W_Q, b_Q ← A b_Q;  W_K ← A^{-T} W_K, b_K ← A^{-T} b_K;
W_V ← B W_V, b_V ← B b_V;  W_O[:, head] ← W_O[:, head] B^{-1}. Then q'ᵀk' = qᵀk and
W_O' v' = W_O v, so every output is unchanged while every attention matrix moves.

Expressed per slot as "multiply the head's coordinates along the slot's axis by M", the
four roles take M = A, A^{-T}, B, B^{-T} (the last because the head indexes W_O's columns);
unlocking takes the inverses A^{-1}, Aᵀ, B^{-1}, Bᵀ. All arithmetic is fp64 and each tensor
is cast back to its dtype exactly once, so bf16 models lose only one rounding.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from mvc.errors import MvcError
from mvc.lock.families import LockPlan, plan_lock
from mvc.lock.matrices import HeadMatrix, head_matrices


def _role_matrices(a: HeadMatrix, b: HeadMatrix, inverse: bool) -> dict[str, np.ndarray]:
    if inverse:
        return {"q": a.inverse, "k": a.matrix.T, "v": b.inverse, "o": b.matrix.T}
    return {"q": a.matrix, "k": a.inverse_t, "v": b.matrix, "o": b.inverse_t}


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in tensors.items()}


def apply_plan(
    plan: LockPlan, tensors: Mapping[str, torch.Tensor], key: bytes, inverse: bool
) -> dict[str, torch.Tensor]:
    """Transform the plan's tensors (all must be in ``tensors``); returns only those.

    Each tensor is cut along its head axis into d-blocks and all blocks go through one
    batched matmul (blocks no slot names, if any, get the identity): hundreds of tiny
    per-head products are slow on a busy CPU, one bmm per tensor is not.
    """
    d = plan.head_dim
    per_tensor: dict[str, tuple[int, dict[int, np.ndarray]]] = {}
    for group in plan.groups:
        a, b = head_matrices(key, plan.family, group.layer, group.kv_head, d, plan.rope)
        for role, matrix in _role_matrices(a, b, inverse).items():
            for slot in group.slots[role]:
                axis, blocks = per_tensor.setdefault(slot.name, (slot.axis, {}))
                if axis != slot.axis or slot.start % d or slot.start // d in blocks:
                    raise ValueError(f"inconsistent lock plan for {slot.name}")
                blocks[slot.start // d] = matrix
    out = {}
    for name, (axis, blocks) in sorted(per_tensor.items()):
        source = tensors[name]
        if not source.dtype.is_floating_point:
            raise MvcError(f"attention tensor {name!r} has non-float dtype {source.dtype}")
        count = source.shape[axis] // d
        mats = np.tile(np.eye(d), (count, 1, 1))
        for index, matrix in blocks.items():
            mats[index] = matrix
        moved = source.detach().to(device="cpu", dtype=torch.float64).movedim(axis, 0)
        result = torch.bmm(torch.from_numpy(mats), moved.reshape(count, d, -1))
        out[name] = result.reshape(moved.shape).movedim(0, axis).to(source.dtype).contiguous()
    return out


def _transform(
    tensors: Mapping[str, torch.Tensor], config: Mapping, key: bytes, inverse: bool
) -> dict[str, torch.Tensor]:
    plan = plan_lock(config, shapes_of(tensors))
    out = dict(tensors)
    out.update(apply_plan(plan, tensors, key, inverse))
    return out


def lock_tensors(
    tensors: Mapping[str, torch.Tensor], config: Mapping, key: bytes
) -> dict[str, torch.Tensor]:
    """All of ``tensors`` with the attention weights locked (other entries are passed through)."""
    return _transform(tensors, config, key, inverse=False)


def unlock_tensors(
    tensors: Mapping[str, torch.Tensor], config: Mapping, key: bytes
) -> dict[str, torch.Tensor]:
    """The exact inverse of ``lock_tensors`` with the same key (up to one rounding per tensor)."""
    return _transform(tensors, config, key, inverse=True)
