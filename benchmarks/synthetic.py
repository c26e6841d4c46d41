"""Synthetic BERT- and LLaMA-shaped models of any size, written block by block, for the benchmarks.

Larger models than the bundled MiniLM are needed to see how time and memory grow, and
they must fit on disk without ever being held in memory: each file is streamed to disk in
row blocks of a few MiB. The models have BERT's tensor names and a real ``config.json``,
so ``mergekit-yaml`` accepts them as the same architecture as MiniLM.

A model is a deterministic function of (config, seed, variant): variant 0 is the base;
variant k > 0 is a "fine-tune" that adds small noise to a chosen fraction of the rows of
every tensor (regenerating the base block by block from its seed, so the base is never
read back).

LLaMA-shaped models (``LlamaShape``, ``write_llama``: GQA, untied head, bf16) can be
sharded with a ``model.safetensors.index.json`` as the Hub lays them out; their fine-tune
variants add noise of ``FT_NOISE`` to every weight before rounding to bf16, so about half
of the elements move by an ulp or two, as a short fine-tune in bf16 does.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.finetune import MODEL_FILE, base_model_dir

BLOCK_BYTES = 4 * 1024 * 1024
BLOCK_ELEMS = 1 << 20
FT_NOISE = 2e-4  # absolute, on weights of std 0.02 (bf16's ulp there is 1.2e-4)
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class Shape:
    """A BERT encoder's dimensions."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int = 30522

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, with BertModel's names."""
        h, i = self.hidden, self.intermediate
        out: list[tuple[str, tuple[int, ...]]] = [
            ("embeddings.word_embeddings.weight", (self.vocab, h)),
            ("embeddings.position_embeddings.weight", (512, h)),
            ("embeddings.token_type_embeddings.weight", (2, h)),
            ("embeddings.LayerNorm.weight", (h,)),
            ("embeddings.LayerNorm.bias", (h,)),
        ]
        for n in range(self.layers):
            p = f"encoder.layer.{n}."
            for proj in ("attention.self.query", "attention.self.key", "attention.self.value"):
                out += [(p + proj + ".weight", (h, h)), (p + proj + ".bias", (h,))]
            out += [
                (p + "attention.output.dense.weight", (h, h)),
                (p + "attention.output.dense.bias", (h,)),
                (p + "attention.output.LayerNorm.weight", (h,)),
                (p + "attention.output.LayerNorm.bias", (h,)),
                (p + "intermediate.dense.weight", (i, h)),
                (p + "intermediate.dense.bias", (i,)),
                (p + "output.dense.weight", (h, i)),
                (p + "output.dense.bias", (h,)),
                (p + "output.LayerNorm.weight", (h,)),
                (p + "output.LayerNorm.bias", (h,)),
            ]
        out += [("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]
        return out

    @property
    def nbytes(self) -> int:
        """Size of the fp32 tensor data."""
        return sum(4 * math.prod(shape) for _, shape in self.tensors())

    def config(self) -> dict[str, object]:
        """MiniLM's config.json with these dimensions."""
        config = json.loads((base_model_dir() / "config.json").read_text())
        heads = max(1, self.hidden // 64)
        config.update(
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            intermediate_size=self.intermediate,
            num_attention_heads=heads,
            vocab_size=self.vocab,
        )
        return config


def shape_for(target_bytes: int) -> Shape:
    """A BERT shape of about ``target_bytes`` fp32 (hidden 1024+, so tensors span many chunks)."""
    hidden = 1024 if target_bytes <= 1 << 30 else 2048
    per_layer = 4 * (4 * hidden * hidden + 2 * hidden * 4 * hidden)
    fixed = 4 * (30522 + 512 + 2) * hidden
    layers = max(1, round((target_bytes - fixed) / per_layer))
    return Shape(hidden=hidden, layers=layers, intermediate=4 * hidden)


def _header(shape: Shape) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shape.tensors():
        size = 4 * math.prod(dims)
        entries[name] = {
            "dtype": "F32",
            "shape": list(dims),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def _blocks(
    index: int, dims: tuple[int, ...], seed: int, variant: int, row_fraction: float
) -> Iterator[bytes]:
    rows = dims[0]
    row_elems = math.prod(dims[1:])
    per_block = max(1, BLOCK_BYTES // (4 * row_elems))
    for block, start in enumerate(range(0, rows, per_block)):
        count = min(per_block, rows - start)
        rng = np.random.default_rng([seed, index, block])
        values = rng.standard_normal((count, row_elems), dtype=np.float32)
        values *= np.float32(0.02)
        if variant:
            tweak = np.random.default_rng([seed, index, block, variant])
            chosen = tweak.random(count) < row_fraction
            noise = tweak.standard_normal((int(chosen.sum()), row_elems), dtype=np.float32)
            values[chosen] += noise * np.float32(2e-4)
        yield values.tobytes()


def write_model(
    folder: Path, shape: Shape, seed: int = 0, variant: int = 0, row_fraction: float = 1.0
) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    header = _header(shape)
    with open(folder / MODEL_FILE, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for index, (_, dims) in enumerate(shape.tensors()):
            for block in _blocks(index, dims, seed, variant, row_fraction):
                f.write(block)
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    return folder


@dataclass(frozen=True)
class LlamaShape:
    """A LLaMA decoder's dimensions (TinyLlama 1.1B: ``LlamaShape.tiny_llama()``)."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int

    @classmethod
    def tiny_llama(cls, layers: int = 22) -> LlamaShape:
        """TinyLlama-1.1B's proportions (1.1 B parameters at 22 layers)."""
        return cls(hidden=2048, layers=layers, intermediate=5632, vocab=32000, heads=32, kv_heads=4)

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, with LlamaForCausalLM's names, in file order."""
        h, i, d = self.hidden, self.intermediate, self.hidden // self.heads
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (self.heads * d, h)),
                (p + "self_attn.k_proj.weight", (self.kv_heads * d, h)),
                (p + "self_attn.v_proj.weight", (self.kv_heads * d, h)),
                (p + "self_attn.o_proj.weight", (h, self.heads * d)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        return out + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    @property
    def nbytes(self) -> int:
        """Size of the bf16 tensor data."""
        return sum(2 * math.prod(s) for _, s in self.tensors())

    def config(self) -> dict[str, object]:
        """A config.json transformers reads as this LlamaForCausalLM."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }


def bf16_bytes(values: np.ndarray) -> bytes:
    """Round-to-nearest-even float32 -> bfloat16 bytes."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


def _llama_values(index: int, block: int, count: int, norm: bool, seed: int, variant: int):
    rng = np.random.default_rng([seed, index, block])
    values = rng.standard_normal(count, dtype=np.float32) * np.float32(0.02)
    if norm:
        values = np.float32(1.0) + np.float32(5) * values  # norm weights around one
    if variant:
        tweak = np.random.default_rng([seed, index, block, variant])
        values += tweak.standard_normal(count, dtype=np.float32) * np.float32(FT_NOISE)
    return values


def _shard_groups(
    tensors: list[tuple[str, tuple[int, ...]]], shards: int
) -> list[list[tuple[int, str, tuple[int, ...]]]]:
    """Tensors (with their index in the model) split in order into ``shards`` files of
    about equal size, as ``save_pretrained(max_shard_size=...)`` does."""
    total = sum(math.prod(s) for _, s in tensors)
    groups: list[list[tuple[int, str, tuple[int, ...]]]] = [[] for _ in range(shards)]
    done = 0
    for index, (name, dims) in enumerate(tensors):
        groups[min(shards - 1, done * shards // total)].append((index, name, dims))
        done += math.prod(dims)
    return [g for g in groups if g]


def write_llama(
    folder: Path, shape: LlamaShape, seed: int = 0, variant: int = 0, shards: int = 1
) -> Path:
    """Write a bf16 LLaMA model and its ``config.json`` into ``folder``; return ``folder``.

    One shard is ``model.safetensors``; more are ``model-0000k-of-0000n.safetensors`` with
    an index. Streamed in blocks of ``BLOCK_ELEMS`` values, never held in memory.
    """
    folder.mkdir(parents=True, exist_ok=True)
    groups = _shard_groups(shape.tensors(), shards)
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups, 1):
        name = MODEL_FILE if len(groups) == 1 else f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for _, tensor, dims in group:
            size = 2 * math.prod(dims)
            entries[tensor] = {
                "dtype": "BF16",
                "shape": list(dims),
                "data_offsets": [offset, offset + size],
            }
            offset += size
            weight_map[tensor] = name
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            for index, _, dims in group:
                total = math.prod(dims)
                for block, start in enumerate(range(0, total, BLOCK_ELEMS)):
                    count = min(BLOCK_ELEMS, total - start)
                    values = _llama_values(index, block, count, len(dims) == 1, seed, variant)
                    f.write(bf16_bytes(values))
    if len(groups) > 1:
        index_doc = {"metadata": {"total_size": shape.nbytes}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index_doc, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    return folder
