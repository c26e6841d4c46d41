"""The whole lock of one model as per-tensor axis maps, derived from the key.

``build`` combines the three output-preserving symmetries into one ``LockTransform``:

- attention (both levels): per KV head A on queries/keys and B on values/output (``matrices``);
- feed-forward (``full``): a permutation of each MLP's neurons, shared by gate and up;
  a positive scaling of the up branch of gated MLPs (exact for any activation, since up is
  linear) and of the neurons themselves for ReLU-family activations;
- residual stream (``full``, only when a head closes the stream): a permutation P of the
  hidden dimension for LayerNorm models; for RMSNorm models the norm weights folded into
  the matrices that read them and a Haar-random rotation Q, or, when the LM head is tied to
  the embeddings, a signed permutation (a rotation would need the final norm folded into
  the head, which would untie it).

Every random draw is seeded by HKDF(key, info naming family, layer and purpose).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from mvc.errors import MvcError
from mvc.lock.families import LockPlan, Shapes, plan_lock
from mvc.lock.layout import Layout, plan_layout, unknown_tensors
from mvc.lock.matrices import HeadMatrix, dense_matrix, generator, head_matrices, log_uniform
from mvc.lock.ops import AxisOp, Blocks, Dense, Permute, Scale

LEVELS = ("attention", "full")
DEFAULT_LEVEL = "full"
_IN_LAYER = re.compile(r"(^|\.)(layer|layers|h)\.\d+\.")


@dataclass
class LockTransform:
    """What the lock does to each tensor, and what the equivalence check needs to know."""

    family: str
    prefix: str
    level: str
    stream: str = "none"  # none | permutation | signed-permutation | rotation
    ops: dict[str, list[AxisOp]] = field(default_factory=dict)
    folded: dict[str, np.ndarray] = field(default_factory=dict)  # norm -> its weight (fp64)
    heads: tuple[str, ...] = ()  # 2-D readers of the final stream, checked as logits
    pooled_heads: tuple[str, ...] = ()  # readers of a permuted pooler output (BERT classifier)
    stream_op: AxisOp | None = None  # S on axis 1 of a [tokens, hidden] batch
    final_scale: np.ndarray | None = None  # the final norm's folded weight
    note: str = ""

    @property
    def tensor_names(self) -> list[str]:
        return sorted(set(self.ops) | set(self.folded))


def _roles(a: HeadMatrix, b: HeadMatrix) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(matrix, inverse) of each role: the attention level's equations (``transform``)."""
    return {
        "q": (a.matrix, a.inverse),
        "k": (a.inverse_t, a.matrix.T),
        "v": (b.matrix, b.inverse),
        "o": (b.inverse_t, b.matrix.T),
    }


def _stacks(
    key: bytes, plan: LockPlan, specs: tuple[tuple[int, int, str], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The identity, then the (matrix, inverse) of each (layer, kv_head, role), stacked."""
    d = plan.head_dim
    pairs = [(np.eye(d), np.eye(d))]
    for layer, kv_head, role in specs:
        a, b = head_matrices(key, plan.family, layer, kv_head, d, plan.rope)
        pairs.append(_roles(a, b)[role])
    return np.stack([m for m, _ in pairs]), np.stack([m_inv for _, m_inv in pairs])


def _attention_ops(plan: LockPlan, key: bytes, shapes: Shapes) -> dict[str, list[AxisOp]]:
    """Per tensor, one Blocks map along its head axis (heads no slot names get identity)."""
    d = plan.head_dim
    per_tensor: dict[str, tuple[int, dict[int, tuple[int, int, str]]]] = {}
    for group in plan.groups:
        for role in ("q", "k", "v", "o"):
            for slot in group.slots[role]:
                axis, blocks = per_tensor.setdefault(slot.name, (slot.axis, {}))
                if axis != slot.axis or slot.start % d or slot.start // d in blocks:
                    raise ValueError(f"inconsistent lock plan for {slot.name}")
                blocks[slot.start // d] = (group.layer, group.kv_head, role)
    out: dict[str, list[AxisOp]] = {}
    for name, (axis, blocks) in per_tensor.items():
        specs = tuple(sorted(set(blocks.values())))
        index = np.zeros(shapes[name][axis] // d, dtype=np.int64)  # 0: the identity
        for block, spec in blocks.items():
            index[block] = 1 + specs.index(spec)
        out[name] = [Blocks(axis, index, functools.partial(_stacks, key, plan, specs))]
    return out


def _feed_forward(layout: Layout, key: bytes, ops: dict[str, list[AxisOp]]) -> None:
    for ffn in layout.feed_forward:
        rng = generator(key, f"family={layout.family}/layer={ffn.layer}/role=ffn")
        perm = rng.permutation(ffn.size)
        s_in = log_uniform(rng, ffn.size) if ffn.homogeneous else None
        s_lin = log_uniform(rng, ffn.size) if ffn.linear else None
        total = np.ones(ffn.size)
        for s in (s_in, s_lin):
            if s is not None:
                total = total * s
        for name, axis in ffn.inputs:
            ops.setdefault(name, []).append(Permute(axis, perm, s_in))
        for name, axis in ffn.linear:
            ops.setdefault(name, []).append(Permute(axis, perm, s_lin))
        for name, axis in ffn.outputs:
            ops.setdefault(name, []).append(Permute(axis, perm, 1.0 / total))


def _stream_kind(layout: Layout, tied: bool) -> str:
    if layout.norm_kind == "layer":
        return "permutation"
    return "signed-permutation" if tied else "rotation"


def _closes_stream(layout: Layout, config: Mapping, named: Collection[str], tied: bool) -> bool:
    if layout.heads or layout.pooler or named:
        return True
    return tied and any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or []
    )


def is_tied(config: Mapping, layout_lm_head: str | None, same_as_embedding: bool) -> bool:
    """Tied when the head is the embedding: stored as such, or absent with a tying config."""
    if layout_lm_head is not None:
        return same_as_embedding
    return bool(config.get("tie_word_embeddings", config.get("model_type") == "gpt2"))


def build(
    config: Mapping,
    shapes: Shapes,
    key: bytes,
    level: str = DEFAULT_LEVEL,
    named: Collection[str] = (),
    norm_weight: Callable[[str], np.ndarray] | None = None,
    head_is_embedding: bool = False,
) -> LockTransform:
    """The lock of a model. ``named`` are tensors outside the family that read the final
    stream (``--reads-hidden``); ``norm_weight`` reads a norm weight in fp64 (needed to fold
    RMSNorms); ``head_is_embedding`` says whether a stored lm_head equals the embedding."""
    if level not in LEVELS:
        raise MvcError(f"unknown MergeLock level {level!r}", hint=f"choose one of {', '.join(LEVELS)}")
    plan = plan_lock(config, shapes)
    ops = _attention_ops(plan, key, shapes)
    result = LockTransform(plan.family, plan.prefix, level, ops=ops)
    if level == "attention":
        if named:
            raise MvcError("--reads-hidden only applies to --level full")
        return result
    layout = plan_layout(config, shapes)
    _feed_forward(layout, key, ops)
    if layout.pooler and any(n == "classifier.weight" for f in layout.feed_forward for n, _ in f.outputs):
        result.pooled_heads = ("classifier.weight",)
    tied = is_tied(config, layout.lm_head, head_is_embedding)
    unknown = [n for n in unknown_tensors(layout, shapes) if n not in named]
    if not _closes_stream(layout, config, named, tied):
        inside = [n for n in unknown if _IN_LAYER.search(n)]
        if inside:
            raise MvcError(f"MergeLock does not understand tensor {inside[0]!r} inside a layer "
                           "(unusual norm, router or adapter?); refusing a partial lock")
        result.note = "no head closes the residual stream, so it is left as is"
        return result
    if unknown:
        raise MvcError(
            f"{len(unknown)} tensor(s) outside the {layout.family} family at the residual "
            f"level, first {unknown[0]!r}",
            hint="name the ones that read the hidden state with --reads-hidden PATTERN, "
            "or lock with --level attention",
        )
    heads = list(layout.heads)
    for name in sorted(named):
        shape = shapes[name]
        if len(shape) >= 2:
            if shape[-1] != layout.hidden:
                raise MvcError(f"{name!r} (shape {list(shape)}) does not read a hidden state "
                               f"of width {layout.hidden} on its last axis")
            heads.append((name, len(shape) - 1))
    _stream(result, layout, key, tied, heads, norm_weight)
    result.heads = tuple(n for n, _ in heads if len(shapes[n]) == 2)
    return result


def _stream(
    result: LockTransform,
    layout: Layout,
    key: bytes,
    tied: bool,
    heads: list[tuple[str, int]],
    norm_weight: Callable[[str], np.ndarray] | None,
) -> None:
    rng = generator(key, f"family={layout.family}/role=stream")
    kind = _stream_kind(layout, tied)
    result.stream = kind
    perm = rng.permutation(layout.hidden)
    op: AxisOp
    if kind == "rotation":
        op = Dense(1, dense_matrix(rng, layout.hidden).rotation)
    elif kind == "signed-permutation":
        op = Permute(1, perm, rng.choice([-1.0, 1.0], layout.hidden))
    else:
        op = Permute(1, perm)
    result.stream_op = op
    ops = result.ops
    if kind == "rotation":
        if norm_weight is None:
            raise ValueError("folding RMSNorm weights needs norm_weight")
        for norm in layout.norms:
            gamma = norm_weight(norm.weight)
            if not np.all(np.isfinite(gamma)) or np.any(gamma == 0):
                # A zero weight would zero the columns it is folded into: unlock could not
                # bring them back.
                raise MvcError(
                    f"norm weight {norm.weight!r} has zero or non-finite entries; "
                    "it cannot be folded into the next layer",
                    hint="lock this model with --level attention",
                )
            result.folded[norm.weight] = gamma
            readers = heads if norm.weight == layout.final_norm else norm.readers
            for name, axis in readers:
                ops.setdefault(name, []).append(Scale(axis, gamma))
            if norm.weight == layout.final_norm:
                result.final_scale = gamma
    else:
        for norm in layout.norms:
            for name in (norm.weight, norm.bias):
                if name is not None:
                    ops.setdefault(name, []).append(Permute(0, perm))
    for name, axis in [*layout.stream, *[h for h in heads if h not in layout.heads]]:
        ops.setdefault(name, []).append(replace(op, axis=axis))
