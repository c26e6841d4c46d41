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

Each size also reports what the lock's equivalence check measured (max output difference,
its tolerance, top-1 agreement of the LM head, as recorded in the lock record) and whether
the unlocked work tree's model file is byte-identical to the original (sha256).

Run: ``.venv/bin/python -m benchmarks.lock_memory [--full] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.measure import MIB, Run, print_scaling_table, run, tool
from benchmarks.storage import GIT_ENV
from benchmarks.synthetic import LlamaShape, write_llama
from mvc.lock.record import lock_record
from mvc.repo import Repo


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(repo: Path) -> dict[str, Any]:
    """What the lock's equivalence check recorded for the model."""
    with Repo.open(repo) as handle:
        record = lock_record(handle, "HEAD") or {}
    return (record.get("models") or [{}])[0]


def _measure(work: Path, shape: LlamaShape) -> tuple[float, dict[str, Run], dict[str, Any]]:
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
    weights = repo / "model" / "model.safetensors"
    original = _sha256(weights)
    runs = {"hold the model in torch (peer)": run([sys.executable, "-c", load], cwd=repo)}
    runs["mvc lock (level full)"] = run(
        [mvc, "lock", "HEAD", "--key", str(key)], cwd=repo, env=GIT_ENV
    )
    check = {**_check(repo), "locked_changed_bytes": _sha256(weights) != original}
    runs["mvc unlock"] = run([mvc, "unlock", "HEAD", "--key", str(key)], cwd=repo, env=GIT_ENV)
    check["unlock_restores_bytes"] = _sha256(weights) == original
    return shape.nbytes / MIB, runs, check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="hidden 2048, 6 and 22 layers (1.1B)")
    parser.add_argument("--workdir", help="folder for the synthetic models (default: system temp)")
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
        with tempfile.TemporaryDirectory(prefix="mvc-bench-lock-", dir=args.workdir) as tmp:
            measured.append(_measure(Path(tmp), LlamaShape(layers=n, **dims)))
            size, _, check = measured[-1]
            print(
                f"{n} layers ({size:.0f} MiB): lock moved outputs by {check.get('max_abs_diff')}"
                f" (tolerance {check.get('tolerance')}), top-1 agreement "
                f"{check.get('top1_agreement')}; locked file differs: "
                f"{check['locked_changed_bytes']}; unlock restores the original bytes "
                f"(sha256): {check['unlock_restores_bytes']}",
                flush=True,
            )
    (small, small_runs, _), (large, large_runs, _) = measured
    print(
        f"mvc lock memory: synthetic LLaMA bf16 models of {small:.0f} MiB and {large:.0f} MiB "
        f"(x{large / small:.2f}), GQA, RoPE, untied head"
    )
    print_scaling_table(small, large, [(op, small_runs[op], large_runs[op]) for op in small_runs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
