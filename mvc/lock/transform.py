"""The MergeLock transform as a pure function of tensors, config and key.

``symmetries.build`` says what happens to each tensor; this module applies it. The
attention level, per KV head with matrices A (queries/keys) and B (values/output), in the
torch convention y = W x + b:  W_Q ← A W_Q, b_Q ← A b_Q;  W_K ← A^{-T} W_K, b_K ← A^{-T} b_K;
W_V ← B W_V, b_V ← B b_V;  W_O[:, head] ← W_O[:, head] B^{-1}. The full level adds the
feed-forward permutations and the residual-stream transform (see ``symmetries``).

Each tensor is cast back to its dtype exactly once, so bf16 models lose only one rounding;
the arithmetic is fp64 for fp32 weights and fp32 for 16-bit ones (``ops.transform`` says why). Folded RMSNorm weights become ones when locked; unlocking
needs their original values (``commit`` keeps them sealed in the lock record).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping

import torch

from mvc.errors import MvcError
from mvc.lock.ops import transform
from mvc.lock.symmetries import DEFAULT_LEVEL, LockTransform, build


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in tensors.items()}


def matching(names: Collection[str], patterns: Collection[str]) -> set[str]:
    """The names matched by any of the shell-style ``patterns`` (``--reads-hidden``)."""
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def apply_one(plan: LockTransform, name: str, tensor: torch.Tensor, inverse: bool) -> torch.Tensor:
    """One tensor locked (or unlocked) by ``plan``; it must be one of ``plan.tensor_names``."""
    if not tensor.dtype.is_floating_point:
        raise MvcError(f"MergeLock tensor {name!r} has non-float dtype {tensor.dtype}")
    if name in plan.folded:
        if not inverse:
            return torch.ones_like(tensor)
        gamma = torch.from_numpy(plan.folded[name]).reshape(tensor.shape)
        return (gamma * tensor.double()).to(tensor.dtype)
    return transform(tensor, plan.ops[name], inverse)


def _same(tensors: Mapping[str, torch.Tensor], a: str, b: str | None) -> bool:
    return b is not None and b in tensors and a in tensors and torch.equal(tensors[a], tensors[b])


def plan_for(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping,
    key: bytes,
    level: str = DEFAULT_LEVEL,
    reads_hidden: Collection[str] = (),
    norms: Mapping[str, torch.Tensor] | None = None,
) -> LockTransform:
    """The lock plan of an in-memory model; ``norms`` supplies folded norm weights (unlock)."""
    source = tensors if norms is None else norms
    named = matching(tensors, reads_hidden)
    lm_head = "lm_head.weight"
    embeddings = [n for n in tensors if n.endswith(("embed_tokens.weight", "wte.weight"))]
    return build(
        config,
        shapes_of(tensors),
        key,
        level,
        named,
        norm_weight=lambda n: source[n].double().numpy(),
        head_is_embedding=bool(embeddings) and _same(tensors, lm_head, embeddings[0]),
    )


def lock_tensors(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping,
    key: bytes,
    level: str = DEFAULT_LEVEL,
    reads_hidden: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """All of ``tensors`` locked (entries no symmetry touches are passed through as is)."""
    return _applied(plan_for(tensors, config, key, level, reads_hidden), tensors, inverse=False)


def unlock_tensors(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping,
    key: bytes,
    level: str = DEFAULT_LEVEL,
    reads_hidden: Collection[str] = (),
    norms: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The inverse of ``lock_tensors`` with the same key (up to one rounding per tensor).

    A rotation-locked RMSNorm model needs ``norms``: the original weights of the folded
    norms, which the locked tensors no longer hold.
    """
    plan = plan_for(tensors, config, key, level, reads_hidden, norms)
    return _applied(plan, tensors, inverse=True)


def _applied(
    plan: LockTransform, tensors: Mapping[str, torch.Tensor], inverse: bool
) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    for name in plan.tensor_names:
        out[name] = apply_one(plan, name, tensors[name], inverse)
    return out
