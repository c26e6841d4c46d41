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
import sys
import tempfile
from pathlib import Path

from benchmarks.measure import MIB, Run, print_scaling_table, run, tool
from benchmarks.storage import GIT_ENV
from benchmarks.synthetic import LlamaShape, write_llama


def _measure(work: Path, shape: LlamaShape) -> tuple[float, dict[str, Run]]:
    mvc = tool("mvc")
    repo = work / "repo"
    repo.mkdir()
    write_llama(repo / "model", shape)
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
        "mvc lock (level full)": run(
            [mvc, "lock", "HEAD", "--key", str(key)], cwd=repo, env=GIT_ENV
        ),
        "mvc unlock": run([mvc, "unlock", "HEAD", "--key", str(key)], cwd=repo, env=GIT_ENV),
    }
    return shape.nbytes / MIB, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="hidden 2048, 6 and 22 layers (1.1B)")
    args = parser.parse_args(argv)
    if args.full:
        dims, layers = (
            dict(hidden=2048, intermediate=5632, vocab=32000, heads=32, kv_heads=4),
            (6, 22),
        )
    else:
        dims, layers = (
            dict(hidden=1024, intermediate=2816, vocab=16000, heads=16, kv_heads=4),
            (4, 16),
        )
    measured = []
    for n in layers:
        with tempfile.TemporaryDirectory(prefix="mvc-bench-lock-") as tmp:
            measured.append(_measure(Path(tmp), LlamaShape(layers=n, **dims)))
    (small, small_runs), (large, large_runs) = measured
    print(
        f"mvc lock memory: synthetic LLaMA bf16 models of {small:.0f} MiB and {large:.0f} MiB "
        f"(x{large / small:.2f}), GQA, RoPE, untied head"
    )
    print_scaling_table(small, large, [(op, small_runs[op], large_runs[op]) for op in small_runs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
