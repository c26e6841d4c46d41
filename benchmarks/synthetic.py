"""Synthetic BERT-shaped models of any size, written tensor by tensor, for the benchmarks.

Larger models than the bundled MiniLM are needed to see how time and memory grow, and
they must fit on disk without ever being held in memory: each file is streamed to disk in
row blocks of a few MiB. The models have BERT's tensor names and a real ``config.json``,
so ``mergekit-yaml`` accepts them as the same architecture as MiniLM.

A model is a deterministic function of (config, seed, variant): variant 0 is the base;
variant k > 0 is a "fine-tune" that adds small noise to a chosen fraction of the rows of
every tensor (regenerating the base block by block from its seed, so the base is never
read back).
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
