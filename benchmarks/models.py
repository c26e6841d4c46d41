"""Issue 18: what a reshard and a vocabulary growth commit cost, against Git LFS.

On the bundled MiniLM (one 90.9 MB ``model.safetensors``), each a fresh process per step:

- reshard (on a branch): the same tensors saved in shards of ``--max-shard-size`` (as
  ``save_pretrained(max_shard_size=...)`` cuts them). mvc: ``mvc reshard``. Git LFS: the
  resharded files (taken from mvc's work tree) committed with ``git add -A``.
- tokens: a commit of a fine-tune (noise on one attention matrix) with ``--tokens`` rows
  appended to the word embedding, against the same commit without them, each in a fresh
  repository holding the base; the figure is the difference.

Bytes are everything the step added under ``.git``. Run:
``.venv/bin/python -m benchmarks.models [--tokens 8] [--max-shard-size 40MB]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.finetune import MODEL_FILE, base_model_dir
from benchmarks.measure import MIB, print_table, run, tool, tree_size
from benchmarks.storage import GIT_ENV

EMB = "embeddings.word_embeddings.weight"
TUNED = "encoder.layer.0.attention.self.query.weight"
INDEX = "model.safetensors.index.json"


def _init(name: str, work: Path, label: str = "") -> tuple[Path, list[str]]:
    """A repository holding the base model in ``model/``; returns it and its commit command."""
    repo = work / f"{name}{label}"
    (repo / "model").mkdir(parents=True)
    shutil.copy(base_model_dir() / MODEL_FILE, repo / "model" / MODEL_FILE)
    shutil.copy(base_model_dir() / "config.json", repo / "model" / "config.json")
    if name == "mvc":
        run([tool("mvc"), "init"], cwd=repo)
        commit = [tool("mvc"), "commit", "-am"]
    else:
        git = tool("git")
        run([git, "init", "-q", "-b", "main"], cwd=repo, env=GIT_ENV)
        run([git, "lfs", "install", "--local"], cwd=repo, env=GIT_ENV)
        run([git, "lfs", "track", "*.safetensors"], cwd=repo, env=GIT_ENV)
        commit = [git, "commit", "-qm"]
    _add(name, repo)
    run([*commit, "base"], cwd=repo, env=GIT_ENV)
    return repo, commit


def _add(name: str, repo: Path) -> None:
    if name == "mvc":
        run([tool("mvc"), "add", "model"], cwd=repo)
    else:
        run([tool("git"), "add", "-A"], cwd=repo, env=GIT_ENV)


def _switch(name: str, repo: Path, branch: str) -> None:
    if name == "mvc":
        run([tool("mvc"), "switch", "-c", branch, "main"], cwd=repo)
    else:
        run([tool("git"), "checkout", "-q", "-b", branch, "main"], cwd=repo, env=GIT_ENV)


def _save_tuned(path: Path, tokens: int) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(base_model_dir() / MODEL_FILE))
    rng = np.random.default_rng(1)
    weights[TUNED] = (weights[TUNED] + 1e-3 * rng.standard_normal(weights[TUNED].shape)).astype(
        np.float32
    )
    if tokens:
        new = (0.02 * rng.standard_normal((tokens, weights[EMB].shape[1]))).astype(np.float32)
        weights[EMB] = np.concatenate([weights[EMB], new])
    save_file(weights, str(path), metadata={"format": "pt"})


def bench(work: Path, tokens: int, max_shard_size: str) -> None:
    model_bytes = (base_model_dir() / MODEL_FILE).stat().st_size
    mvc_repo, _ = _init("mvc", work)
    lfs_repo, lfs_commit = _init("lfs", work)

    _switch("mvc", mvc_repo, "sharded")
    _switch("lfs", lfs_repo, "sharded")
    before = tree_size(mvc_repo / ".git")
    run([tool("mvc"), "reshard", "model", "--max-shard-size", max_shard_size], cwd=mvc_repo)
    mvc_reshard = tree_size(mvc_repo / ".git") - before
    for old in (lfs_repo / "model").glob("*.safetensors"):
        old.unlink()
    for shard in (mvc_repo / "model").iterdir():
        shutil.copy(shard, lfs_repo / "model" / shard.name)
    before = tree_size(lfs_repo / ".git")
    _add("lfs", lfs_repo)
    run([*lfs_commit, "reshard"], cwd=lfs_repo, env=GIT_ENV)
    lfs_reshard = tree_size(lfs_repo / ".git") - before
    print_table(
        f"Reshard MiniLM ({model_bytes / MIB:.1f} MiB) into {max_shard_size} shards",
        ["tool", "bytes added", "of the model"],
        [
            ["mvc reshard", mvc_reshard, f"{mvc_reshard / model_bytes:.4%}"],
            ["Git LFS", lfs_reshard, f"{lfs_reshard / model_bytes:.2%}"],
        ],
    )

    rows = []
    for name, key in (("mvc", "mvc"), ("Git LFS", "lfs")):
        added = []
        for extra in (0, tokens):  # a fresh repository each, so nothing is shared between them
            repo, commit = _init(key, work, f"-{extra}")
            _switch(key, repo, "ft")
            _save_tuned(repo / "model" / MODEL_FILE, extra)
            before = tree_size(repo / ".git")
            _add(key, repo)
            run([*commit, f"fine-tune, {extra} new tokens"], cwd=repo, env=GIT_ENV)
            added.append(tree_size(repo / ".git") - before)
        rows.append([name, added[0], added[1], added[1] - added[0]])
    print_table(
        f"A fine-tune commit with and without {tokens} new token rows",
        ["tool", "bytes, no new tokens", f"bytes, {tokens} new tokens", "difference"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8, help="token rows to append")
    parser.add_argument("--max-shard-size", default="40MB", help="shard size to reshard to")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mvc-bench-models-") as tmp:
        bench(Path(tmp), args.tokens, args.max_shard_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
