"""Issue 14: peak memory of `mvc lock` / `mvc unlock` on LLaMA-shaped bf16 models of two sizes.

The lock streams tensor by tensor and checks equivalence one module at a time, so its peak
memory should follow the largest tensor (the embedding and the LM head, which are the same
at both sizes here: only the number of layers changes), not the model. The peer is what a
whole-model lock has to do first: hold every tensor in torch (``safetensors.torch.load_file``
and a copy of each tensor, since the file is mapped lazily), whose memory grows with the
model.

Models: random-init LLaMA (GQA, RoPE, untied head, so the stream is rotated and the norms are
folded) in bf16, written block by block, never held in memory. The default (short): hidden
1024, intermediate 2816, 16000 tokens, 4 and 16 layers (155 and 420 MiB). ``--full``: hidden 2048, intermediate 5632, 32000
tokens, 6 and 22 layers (TinyLlama's 1.1B shape at 22 layers).

Run: ``.venv/bin/python -m benchmarks.lock_memory [--full]``.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.measure import MIB, Run, print_scaling_table, run, tool
from benchmarks.storage import GIT_ENV

BLOCK_ELEMS = 1 << 20


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
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
        return sum(2 * math.prod(s) for _, s in self.tensors())

    def config(self) -> dict[str, object]:
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


def _bf16(values: np.ndarray) -> bytes:
    """Round-to-nearest-even float32 -> bfloat16 bytes."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()


def write_model(folder: Path, shape: LlamaShape, seed: int = 0) -> Path:
    """``folder/model.safetensors`` + ``config.json``, streamed in blocks of 1 Mi values."""
    folder.mkdir(parents=True, exist_ok=True)
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in shape.tensors():
        size = 2 * math.prod(dims)
        entries[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for index, (_, dims) in enumerate(shape.tensors()):
            total = math.prod(dims)
            for block, start in enumerate(range(0, total, BLOCK_ELEMS)):
                rng = np.random.default_rng([seed, index, block])
                values = rng.standard_normal(min(BLOCK_ELEMS, total - start)) * 0.02
                if len(dims) == 1:
                    values = 1.0 + 5 * values  # norm weights around one
                f.write(_bf16(values))
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
    return folder


def _measure(work: Path, shape: LlamaShape) -> tuple[float, dict[str, Run]]:
    mvc = tool("mvc")
    repo = work / "repo"
    repo.mkdir()
    write_model(repo / "model", shape)
    run([mvc, "init"], cwd=repo, env=GIT_ENV)
    run([mvc, "add", "model"], cwd=repo, env=GIT_ENV)
    run([mvc, "commit", "-m", "base"], cwd=repo, env=GIT_ENV)
    key = work / "bench.key"
    run([mvc, "keygen", str(key)], cwd=repo, env=GIT_ENV)
    # load_file maps the file lazily; cloning makes torch hold the model, as a lock that
    # loads every tensor (mvc before issue 14) does.
    load = (
        "from safetensors.torch import load_file; "
        "held = [t.clone() for t in load_file('model/model.safetensors').values()]"
    )
    runs = {
        "hold the model in torch (peer)": run([sys.executable, "-c", load], cwd=repo),
        "mvc lock (level full)": run([mvc, "lock", "HEAD", "--key", str(key)], cwd=repo, env=GIT_ENV),
        "mvc unlock": run([mvc, "unlock", "HEAD", "--key", str(key)], cwd=repo, env=GIT_ENV),
    }
    return shape.nbytes / MIB, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="hidden 2048, 6 and 22 layers (1.1B)")
    args = parser.parse_args(argv)
    if args.full:
        dims, layers = dict(hidden=2048, intermediate=5632, vocab=32000, heads=32, kv_heads=4), (6, 22)
    else:
        dims, layers = dict(hidden=1024, intermediate=2816, vocab=16000, heads=16, kv_heads=4), (4, 16)
    measured = []
    for n in layers:
        with tempfile.TemporaryDirectory(prefix="mvc-bench-lock-") as tmp:
            measured.append(_measure(Path(tmp), LlamaShape(layers=n, **dims)))
    (small, small_runs), (large, large_runs) = measured
    print(f"mvc lock memory: synthetic LLaMA bf16 models of {small:.0f} MiB and {large:.0f} MiB "
          f"(x{large / small:.2f}), GQA, RoPE, untied head")
    print_scaling_table(small, large, [(op, small_runs[op], large_runs[op]) for op in small_runs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
