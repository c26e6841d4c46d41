"""Which tensors MergeLock transforms, per architecture family.

Detection reads config.json (``model_type``, else ``architectures``) and checks the tensor
names and shapes against it. Anything that does not fit exactly is an error: a lock that
silently skipped a layer would still be mergeable there, and a transform applied to an
architecture whose attention we do not understand (relative positions, per-head norms,
partial rotary) would change the model's outputs.

The result is a ``LockPlan``: per (layer, KV head) the *slots* (tensor, axis, offset) where
the head's coordinates live for each role. Every role is "multiply the head's block along
``axis`` by a d×d matrix", which covers torch (out×in) and Conv1D (in×out) layouts alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mvc.errors import MvcError

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Slot:
    """A head's d coordinates in one tensor: indices [start, start + d) along ``axis``."""

    name: str
    axis: int
    start: int


@dataclass(frozen=True)
class HeadGroup:
    """One KV head of one layer and every slot its matrices act on, per role."""

    layer: int
    kv_head: int
    slots: Mapping[str, tuple[Slot, ...]]


@dataclass(frozen=True)
class LockPlan:
    family: str
    prefix: str
    head_dim: int
    rope: bool
    groups: tuple[HeadGroup, ...]

    @property
    def tensor_names(self) -> list[str]:
        """Every tensor the lock rewrites, sorted."""
        return sorted({s.name for g in self.groups for slots in g.slots.values() for s in slots})


def _cfg_int(config: Mapping, *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    raise MvcError(f"config.json lacks a positive integer {keys[0]!r}; cannot plan a MergeLock")


def _layers(shapes: Shapes, pattern: str, n_layers: int, family: str) -> str:
    """Find the common name prefix and check that layers 0..n_layers-1 are all present."""
    regex = re.compile(rf"^(.*?){pattern}$")
    found: dict[str, set[int]] = {}
    for name in shapes:
        match = regex.match(name)
        if match:
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
    if not found:
        raise MvcError(f"no {family} attention tensors found; the model does not match its config")
    if len(found) > 1:
        raise MvcError(f"{family} attention tensors under several prefixes: {sorted(found)}")
    prefix, layers = next(iter(found.items()))
    if layers != set(range(n_layers)):
        raise MvcError(
            f"{family} model declares {n_layers} layers but attention tensors exist for "
            f"{sorted(layers)}; refusing a partial lock"
        )
    return prefix


def _expect(shapes: Shapes, name: str, shape: tuple[int, ...], optional: bool = False) -> bool:
    if name not in shapes:
        if optional:
            return False
        raise MvcError(f"MergeLock needs tensor {name!r}, which the model lacks")
    if tuple(shapes[name]) != shape:
        raise MvcError(f"tensor {name!r} has shape {list(shapes[name])}, expected {list(shape)}")
    return True


def _linear_slots(
    shapes: Shapes, base: str, out_dim: int, in_dim: int, starts: list[int]
) -> tuple[Slot, ...]:
    """Slots of torch nn.Linear heads (rows of weight and bias) at the given offsets."""
    _expect(shapes, f"{base}.weight", (out_dim, in_dim))
    has_bias = _expect(shapes, f"{base}.bias", (out_dim,), optional=True)
    slots = [Slot(f"{base}.weight", 0, s) for s in starts]
    if has_bias:
        slots += [Slot(f"{base}.bias", 0, s) for s in starts]
    return tuple(slots)


def plan_bert(config: Mapping, shapes: Shapes) -> LockPlan:
    """BERT-style encoders: separate query/key/value Linear layers, one KV head per head."""
    pos = config.get("position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise MvcError(f"BERT position_embedding_type {pos!r} mixes positions into attention")
    hidden = _cfg_int(config, "hidden_size")
    heads = _cfg_int(config, "num_attention_heads")
    n_layers = _cfg_int(config, "num_hidden_layers")
    if hidden % heads:
        raise MvcError(f"hidden_size {hidden} is not divisible by {heads} heads")
    d = hidden // heads
    pattern = r"encoder\.layer\.(\d+)\.attention\.self\.query\.weight"
    prefix = _layers(shapes, pattern, n_layers, "BERT")
    groups = []
    for layer in range(n_layers):
        base = f"{prefix}encoder.layer.{layer}.attention"
        _expect(shapes, f"{base}.output.dense.weight", (hidden, hidden))
        for h in range(heads):
            starts = [h * d]
            groups.append(
                HeadGroup(
                    layer,
                    h,
                    {
                        "q": _linear_slots(shapes, f"{base}.self.query", hidden, hidden, starts),
                        "k": _linear_slots(shapes, f"{base}.self.key", hidden, hidden, starts),
                        "v": _linear_slots(shapes, f"{base}.self.value", hidden, hidden, starts),
                        "o": (Slot(f"{base}.output.dense.weight", 1, h * d),),
                    },
                )
            )
    return LockPlan("bert", prefix, d, False, tuple(groups))


def plan_gpt2(config: Mapping, shapes: Shapes) -> LockPlan:
    """GPT-2: Q, K, V fused in c_attn, Conv1D layout (in×out), so heads are columns."""
    if config.get("add_cross_attention"):
        raise MvcError("GPT-2 with cross-attention is not supported by MergeLock")
    hidden = _cfg_int(config, "n_embd", "hidden_size")
    heads = _cfg_int(config, "n_head", "num_attention_heads")
    n_layers = _cfg_int(config, "n_layer", "num_hidden_layers")
    if hidden % heads:
        raise MvcError(f"n_embd {hidden} is not divisible by {heads} heads")
    d = hidden // heads
    prefix = _layers(shapes, r"h\.(\d+)\.attn\.c_attn\.weight", n_layers, "GPT-2")
    groups = []
    for layer in range(n_layers):
        base = f"{prefix}h.{layer}.attn"
        _expect(shapes, f"{base}.c_attn.weight", (hidden, 3 * hidden))
        has_bias = _expect(shapes, f"{base}.c_attn.bias", (3 * hidden,), optional=True)
        _expect(shapes, f"{base}.c_proj.weight", (hidden, hidden))
        for h in range(heads):
            slots: dict[str, tuple[Slot, ...]] = {}
            for i, role in enumerate("qkv"):
                start = i * hidden + h * d
                fused = [Slot(f"{base}.c_attn.weight", 1, start)]
                if has_bias:
                    fused.append(Slot(f"{base}.c_attn.bias", 0, start))
                slots[role] = tuple(fused)
            slots["o"] = (Slot(f"{base}.c_proj.weight", 0, h * d),)
            groups.append(HeadGroup(layer, h, slots))
    return LockPlan("gpt2", prefix, d, False, tuple(groups))


def plan_llama(config: Mapping, shapes: Shapes) -> LockPlan:
    """LLaMA/Mistral/Qwen2: q/k/v/o_proj, RoPE (rotate_half pairs), GQA groups."""
    partial = config.get("partial_rotary_factor", 1.0)
    if partial not in (None, 1, 1.0):
        raise MvcError(f"partial_rotary_factor {partial} is not supported by MergeLock")
    hidden = _cfg_int(config, "hidden_size")
    heads = _cfg_int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    n_layers = _cfg_int(config, "num_hidden_layers")
    d = config.get("head_dim") or hidden // heads
    if not isinstance(kv_heads, int) or heads % kv_heads:
        raise MvcError(f"{heads} attention heads cannot be grouped over {kv_heads} KV heads")
    if d % 2:
        raise MvcError(f"RoPE head_dim must be even, got {d}")
    rep = heads // kv_heads
    prefix = _layers(shapes, r"layers\.(\d+)\.self_attn\.q_proj\.weight", n_layers, "LLaMA")
    groups = []
    for layer in range(n_layers):
        base = f"{prefix}layers.{layer}.self_attn"
        _expect(shapes, f"{base}.o_proj.weight", (hidden, heads * d))
        for g in range(kv_heads):
            # HF repeat_kv: query head h reads KV head h // rep.
            q_starts = [(g * rep + j) * d for j in range(rep)]
            groups.append(
                HeadGroup(
                    layer,
                    g,
                    {
                        "q": _linear_slots(shapes, f"{base}.q_proj", heads * d, hidden, q_starts),
                        "k": _linear_slots(shapes, f"{base}.k_proj", kv_heads * d, hidden, [g * d]),
                        "v": _linear_slots(shapes, f"{base}.v_proj", kv_heads * d, hidden, [g * d]),
                        "o": tuple(Slot(f"{base}.o_proj.weight", 1, s) for s in q_starts),
                    },
                )
            )
    return LockPlan("llama", prefix, d, True, tuple(groups))


PLANNERS: dict[str, Callable[[Mapping, Shapes], LockPlan]] = {
    "bert": plan_bert,
    "gpt2": plan_gpt2,
    "llama": plan_llama,
    "mistral": plan_llama,
    "qwen2": plan_llama,
}
_ARCHITECTURE_PREFIXES = {
    "Bert": "bert",
    "GPT2": "gpt2",
    "Llama": "llama",
    "Mistral": "mistral",
    "Qwen2": "qwen2",
}


def model_type(config: Mapping) -> str:
    """The config's model_type, or one inferred from ``architectures`` when it is missing."""
    declared = config.get("model_type")
    if isinstance(declared, str):
        return declared
    for arch in config.get("architectures") or []:
        for prefix, name in _ARCHITECTURE_PREFIXES.items():
            # "Qwen2ForCausalLM" but not "Qwen2MoeForCausalLM": the next char must start a word.
            rest = (
                arch[len(prefix) :] if isinstance(arch, str) and arch.startswith(prefix) else None
            )
            if rest is not None and (rest == "" or rest.startswith(("Model", "For", "LM"))):
                return name
    return str(declared or (config.get("architectures") or ["<none>"])[0])


def plan_lock(config: Mapping, shapes: Shapes) -> LockPlan:
    """The lock plan for a model, or an ``MvcError`` naming why it cannot be locked."""
    kind = model_type(config)
    planner = PLANNERS.get(kind)
    if planner is None:
        raise MvcError(
            f"MergeLock does not know architecture {kind!r}",
            hint=f"supported model_type values: {', '.join(sorted(PLANNERS))}",
        )
    return planner(config, shapes)
