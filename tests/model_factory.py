"""Small synthetic HF-style model folders for repository tests (fp32, bf16, sharded)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from mvc.repo import Repo

CONFIG = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 2}


def random_weights(seed: int = 0, rows: int = 64, cols: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embeddings.weight": rng.standard_normal((rows, cols)).astype(np.float32),
        "layer.0.weight": rng.standard_normal((cols, cols)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(cols).astype(np.float32),
        "layer.1.weight": rng.standard_normal((cols, cols)).astype(np.float32),
        "scale": np.array(1.5, dtype=np.float32),
    }


def fine_tuned(
    weights: dict[str, np.ndarray],
    seed: int = 1,
    scale: float = 1e-3,
    only: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in weights.items():
        if only is None or name in only:
            out[name] = np.asarray(
                value + scale * rng.standard_normal(value.shape), dtype=value.dtype
            )
        else:
            out[name] = value.copy()
    return out


def write_safetensors_np(
    path: Path,
    weights: dict[str, np.ndarray],
    bf16: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write with the real safetensors library (bf16 through torch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if bf16:
        import torch
        from safetensors.torch import save_file

        save_file(
            {k: torch.from_numpy(v.copy()).to(torch.bfloat16) for k, v in weights.items()},
            str(path),
            metadata=metadata,
        )
    else:
        from safetensors.numpy import save_file

        save_file(weights, str(path), metadata=metadata)


def write_unusual(path: Path, weights: dict[str, np.ndarray]) -> None:
    """A header not written by the safetensors library: reversed key order, spaces, padding."""
    entries = []
    offset = 0
    blobs = []
    for name in sorted(weights, reverse=True):
        data = weights[name].tobytes()
        entries.append((name, weights[name], offset, offset + len(data)))
        blobs.append(data)
        offset += len(data)
    parts = ['"__metadata__" : {"format": "pt", "note": "hand written"}']
    for name, value, begin, end in entries:
        parts.append(
            f'"{name}" : {{ "shape": {list(value.shape)}, "data_offsets": [{begin}, {end}], '
            f'"dtype": "F32" }}'
        )
    header = ("{ " + ",\n  ".join(parts) + " }").encode() + b"      "
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"".join(blobs))


def write_model_folder(
    folder: Path, weights: dict[str, np.ndarray], bf16: bool = False, shards: int = 1
) -> None:
    """An HF folder: config.json, tokenizer file, one file or `shards` shards + index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (folder / "tokenizer.json").write_text('{"version": "1.0", "vocab": ["a", "b"]}')
    if shards == 1:
        write_safetensors_np(folder / "model.safetensors", weights, bf16=bf16)
        return
    names = sorted(weights)
    weight_map = {}
    for i in range(shards):
        part = {n: weights[n] for n in names[i::shards]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors_np(folder / fname, part, bf16=bf16)
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to compare trees byte for byte."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }


def committed_base(
    root: Path, weights: dict[str, np.ndarray] | None = None, bf16: bool = False
) -> Repo:
    """A new repository at `root` whose first commit, "base", holds the model folder
    `model/` with `weights` (default: `random_weights(0)`)."""
    repo = Repo.init(root)
    write_model_folder(repo.root / "model", random_weights(0) if weights is None else weights, bf16)
    repo.add([repo.root / "model"])
    repo.commit("base")
    return repo
