"""Where the feed-forward neurons and the residual stream live in each family's tensors.

The attention plan (``families``) says where each head's coordinates are; this module says,
for the two further symmetries of ``--level full``, which tensor axes hold

- the *intermediate neurons* of each feed-forward block (rows of up/gate and their biases,
  columns of down; Conv1D layouts swap the axes), and
- the *residual stream*: every embedding, every matrix reading or writing the stream, every
  norm on it, and the heads that read it after the last layer.

Every tensor of the model must be accounted for: a tensor the layout does not know (an
extra norm, a router, an adapter) is refused at these levels, because a symmetry that
missed one reader of the stream would change the model's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mvc.errors import MvcError
from mvc.lock.families import Shapes, _cfg_int, _expect, plan_lock

# Activations for which act(s·x) = s·act(x) for s > 0: neurons may also be scaled.
POSITIVELY_HOMOGENEOUS = frozenset({"relu", "leaky_relu", "relu6_unbounded"})
AxisRef = tuple[str, int]


@dataclass(frozen=True)
class FeedForward:
    """One MLP block: where its neurons are, and which scaling is exact."""

    layer: int
    size: int
    inputs: tuple[AxisRef, ...]  # up (and gate) rows and biases: neurons as outputs
    linear: tuple[AxisRef, ...]  # the gated MLP's up branch: scaling it is exact for any act
    outputs: tuple[AxisRef, ...]  # down columns: neurons as inputs
    homogeneous: bool  # ReLU family in an ungated MLP: inputs may be scaled too


@dataclass(frozen=True)
class Norm:
    """A norm on the stream and the matrices that read its output (for RMSNorm folding)."""

    weight: str
    bias: str | None
    readers: tuple[AxisRef, ...]


@dataclass(frozen=True)
class Layout:
    family: str
    hidden: int
    norm_kind: str  # "layer" or "rms"
    stream: tuple[AxisRef, ...]  # every axis that holds stream coordinates (norms excluded)
    norms: tuple[Norm, ...]
    feed_forward: tuple[FeedForward, ...]
    heads: tuple[AxisRef, ...]  # readers of the final stream outside the base model
    passive: frozenset[str]  # known tensors no stream/FFN symmetry touches
    embedding: str
    final_norm: str | None  # the norm whose output the heads read (RMS models)
    lm_head: str | None
    pooler: bool

    @property
    def known(self) -> set[str]:
        names = {n for n, _ in self.stream} | set(self.passive)
        for norm in self.norms:
            names.add(norm.weight)
            if norm.bias:
                names.add(norm.bias)
        for ffn in self.feed_forward:
            names |= {n for n, _ in (*ffn.inputs, *ffn.linear, *ffn.outputs)}
        return names


def _opt(shapes: Shapes, name: str, shape: tuple[int, ...]) -> bool:
    return _expect(shapes, name, shape, optional=True)


def _activation(config: Mapping, *keys: str) -> str:
    for key in keys:
        if isinstance(config.get(key), str):
            return config[key]
    return "gelu"


def _refuse_moe(config: Mapping) -> None:
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size"):
        if config.get(key):
            raise MvcError(f"MergeLock --level full does not support MoE routers ({key} is set)")


def _heads(shapes: Shapes, hidden: int, pooler: bool) -> tuple[list[AxisRef], set[str]]:
    """HF's standard heads after the base model: (stream readers, known passive tensors)."""
    readers, passive = [], set()
    for base in ("lm_head", "score", "classifier"):
        weight = f"{base}.weight"
        if weight not in shapes:
            continue
        if len(shapes[weight]) != 2 or shapes[weight][1] != hidden:
            raise MvcError(f"head {weight!r} has shape {list(shapes[weight])}; expected [*, {hidden}]")
        if base == "classifier" and pooler:
            passive.add(weight)  # it reads the pooler's output, which no symmetry changes
        else:
            readers.append((weight, 1))
        if f"{base}.bias" in shapes:
            passive.add(f"{base}.bias")
    return readers, passive


def layout_bert(config: Mapping, shapes: Shapes, prefix: str) -> Layout:
    """Post-norm BERT encoders: LayerNorm after each residual sum, GELU/ReLU MLPs."""
    hidden = _cfg_int(config, "hidden_size")
    inter = _cfg_int(config, "intermediate_size")
    n_layers = _cfg_int(config, "num_hidden_layers")
    emb = f"{prefix}embeddings"
    stream: list[AxisRef] = []
    passive: set[str] = {f"{emb}.position_ids", f"{emb}.token_type_ids"}
    for kind in ("word", "position", "token_type"):
        name = f"{emb}.{kind}_embeddings.weight"
        if kind == "word" or name in shapes:
            if name not in shapes or shapes[name][-1] != hidden:
                raise MvcError(f"MergeLock needs tensor {name!r} of width {hidden}")
            stream.append((name, 1))
    norms = [Norm(f"{emb}.LayerNorm.weight", f"{emb}.LayerNorm.bias", ())]
    ffns = []
    act = _activation(config, "hidden_act")
    for layer in range(n_layers):
        base = f"{prefix}encoder.layer.{layer}"
        att = f"{base}.attention"
        for role in ("query", "key", "value"):
            stream.append((f"{att}.self.{role}.weight", 1))
            passive.add(f"{att}.self.{role}.bias")
        stream += [(f"{att}.output.dense.weight", 0), (f"{att}.output.dense.bias", 0)]
        norms.append(Norm(f"{att}.output.LayerNorm.weight", f"{att}.output.LayerNorm.bias", ()))
        up, down = f"{base}.intermediate.dense", f"{base}.output.dense"
        _expect(shapes, f"{up}.weight", (inter, hidden))
        _expect(shapes, f"{down}.weight", (hidden, inter))
        inputs = [(f"{up}.weight", 0)] + ([(f"{up}.bias", 0)] if _opt(shapes, f"{up}.bias", (inter,)) else [])
        ffns.append(
            FeedForward(layer, inter, tuple(inputs), (), ((f"{down}.weight", 1),),
                        act in POSITIVELY_HOMOGENEOUS)
        )
        stream += [(f"{up}.weight", 1), (f"{down}.weight", 0), (f"{down}.bias", 0)]
        norms.append(Norm(f"{base}.output.LayerNorm.weight", f"{base}.output.LayerNorm.bias", ()))
    pooler = f"{prefix}pooler.dense.weight" in shapes
    if pooler:
        _expect(shapes, f"{prefix}pooler.dense.weight", (hidden, hidden))
        stream.append((f"{prefix}pooler.dense.weight", 1))
        passive.add(f"{prefix}pooler.dense.bias")
    heads, head_passive = _heads(shapes, hidden, pooler)
    if pooler and "classifier.weight" in head_passive:
        # tanh is elementwise: the pooler's outputs may be permuted like MLP neurons when a
        # classifier reads them (the pooler output itself is then no longer the product).
        head_passive.discard("classifier.weight")
        passive.discard(f"{prefix}pooler.dense.bias")
        ffns.append(FeedForward(
            n_layers, hidden,
            ((f"{prefix}pooler.dense.weight", 0), (f"{prefix}pooler.dense.bias", 0)),
            (), (("classifier.weight", 1),), False,
        ))
    stream = [(n, a) for n, a in stream if n in shapes]
    return Layout(
        "bert", hidden, "layer", tuple(stream + heads), tuple(norms), tuple(ffns), tuple(heads),
        frozenset(passive | head_passive), f"{emb}.word_embeddings.weight", None, None, pooler,
    )


def layout_gpt2(config: Mapping, shapes: Shapes, prefix: str) -> Layout:
    """GPT-2: pre-norm LayerNorm, Conv1D weights (in×out), so every axis is swapped."""
    hidden = _cfg_int(config, "n_embd", "hidden_size")
    n_layers = _cfg_int(config, "n_layer", "num_hidden_layers")
    inter = config.get("n_inner") or 4 * hidden
    act = _activation(config, "activation_function")
    stream: list[AxisRef] = [(f"{prefix}wte.weight", 1), (f"{prefix}wpe.weight", 1)]
    passive: set[str] = set()
    norms, ffns = [], []
    for layer in range(n_layers):
        base = f"{prefix}h.{layer}"
        passive |= {f"{base}.attn.bias", f"{base}.attn.masked_bias", f"{base}.attn.c_attn.bias"}
        norms.append(Norm(f"{base}.ln_1.weight", f"{base}.ln_1.bias", ()))
        stream += [(f"{base}.attn.c_attn.weight", 0), (f"{base}.attn.c_proj.weight", 1),
                   (f"{base}.attn.c_proj.bias", 0)]
        norms.append(Norm(f"{base}.ln_2.weight", f"{base}.ln_2.bias", ()))
        fc, proj = f"{base}.mlp.c_fc", f"{base}.mlp.c_proj"
        _expect(shapes, f"{fc}.weight", (hidden, inter))
        _expect(shapes, f"{proj}.weight", (inter, hidden))
        inputs = [(f"{fc}.weight", 1)] + ([(f"{fc}.bias", 0)] if _opt(shapes, f"{fc}.bias", (inter,)) else [])
        ffns.append(FeedForward(layer, inter, tuple(inputs), (), ((f"{proj}.weight", 0),),
                                act in POSITIVELY_HOMOGENEOUS))
        stream += [(f"{fc}.weight", 0), (f"{proj}.weight", 1), (f"{proj}.bias", 0)]
    norms.append(Norm(f"{prefix}ln_f.weight", f"{prefix}ln_f.bias", ()))
    heads, head_passive = _heads(shapes, hidden, False)
    stream = [(n, a) for n, a in stream if n in shapes]
    lm_head = "lm_head.weight" if "lm_head.weight" in shapes else None
    return Layout(
        "gpt2", hidden, "layer", tuple(stream + heads), tuple(norms), tuple(ffns), tuple(heads),
        frozenset(passive | head_passive), f"{prefix}wte.weight", None, lm_head, False,
    )


def layout_llama(config: Mapping, shapes: Shapes, prefix: str) -> Layout:
    """LLaMA/Mistral/Qwen2: pre-norm RMSNorm, SwiGLU (gate and up share the neurons)."""
    _refuse_moe(config)
    hidden = _cfg_int(config, "hidden_size")
    inter = _cfg_int(config, "intermediate_size")
    n_layers = _cfg_int(config, "num_hidden_layers")
    act = _activation(config, "hidden_act")
    embedding = f"{prefix}embed_tokens.weight"
    _expect(shapes, embedding, (_cfg_int(config, "vocab_size"), hidden))
    stream: list[AxisRef] = [(embedding, 1)]
    passive: set[str] = set()
    norms, ffns = [], []
    for layer in range(n_layers):
        base = f"{prefix}layers.{layer}"
        att, mlp = f"{base}.self_attn", f"{base}.mlp"
        readers = tuple((f"{att}.{p}_proj.weight", 1) for p in "qkv")
        passive |= {f"{att}.{p}_proj.bias" for p in "qkv"} | {f"{att}.rotary_emb.inv_freq"}
        norms.append(Norm(f"{base}.input_layernorm.weight", None, readers))
        stream += [*readers, (f"{att}.o_proj.weight", 0), (f"{att}.o_proj.bias", 0)]
        gate, up, down = (f"{mlp}.{p}_proj" for p in ("gate", "up", "down"))
        for name, shape in ((gate, (inter, hidden)), (up, (inter, hidden)), (down, (hidden, inter))):
            _expect(shapes, f"{name}.weight", shape)
        mlp_readers = ((f"{gate}.weight", 1), (f"{up}.weight", 1))
        norms.append(Norm(f"{base}.post_attention_layernorm.weight", None, mlp_readers))
        ffns.append(FeedForward(
            layer, inter,
            ((f"{gate}.weight", 0), (f"{gate}.bias", 0)),
            ((f"{up}.weight", 0), (f"{up}.bias", 0)),
            ((f"{down}.weight", 1),),
            act in POSITIVELY_HOMOGENEOUS,
        ))
        stream += [*mlp_readers, (f"{down}.weight", 0), (f"{down}.bias", 0)]
    heads, head_passive = _heads(shapes, hidden, False)
    final = f"{prefix}norm.weight"
    norms.append(Norm(final, None, tuple(heads)))
    stream = [(n, a) for n, a in stream if n in shapes]
    lm_head = "lm_head.weight" if "lm_head.weight" in shapes else None
    layout = Layout(
        "llama", hidden, "rms", tuple(stream + heads), tuple(norms), tuple(ffns), tuple(heads),
        frozenset(passive | head_passive), embedding, final, lm_head, False,
    )
    return _drop_absent(layout, shapes)


def _drop_absent(layout: Layout, shapes: Shapes) -> Layout:
    """Optional biases (Qwen2's q/k/v, mlp_bias) that this checkpoint does not have."""
    ffns = tuple(
        FeedForward(
            f.layer, f.size,
            tuple(r for r in f.inputs if r[0] in shapes),
            tuple(r for r in f.linear if r[0] in shapes),
            f.outputs, f.homogeneous,
        )
        for f in layout.feed_forward
    )
    return Layout(
        layout.family, layout.hidden, layout.norm_kind, layout.stream, layout.norms, ffns,
        layout.heads, layout.passive, layout.embedding, layout.final_norm, layout.lm_head,
        layout.pooler,
    )


LAYOUTS = {"bert": layout_bert, "gpt2": layout_gpt2, "llama": layout_llama}


def plan_layout(config: Mapping, shapes: Shapes) -> Layout:
    """The stream/FFN layout of a model, checked against its tensors (norms must exist)."""
    plan = plan_lock(config, shapes)
    layout = LAYOUTS[plan.family](config, shapes, plan.prefix)
    for norm in layout.norms:
        _expect(shapes, norm.weight, (layout.hidden,))
        if norm.bias is not None:
            _expect(shapes, norm.bias, (layout.hidden,))
    return layout


def unknown_tensors(layout: Layout, shapes: Shapes) -> list[str]:
    """Tensors of the model that no part of the layout accounts for."""
    known = layout.known
    return sorted(n for n in shapes if n not in known)

