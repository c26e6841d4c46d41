"""`add` of many shards: each header parsed once, sibling manifests read once per folder.

Linearity is shown by counting work (header parses, manifest reads), never by timing.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import write_safetensors_np

import mvc.formats.safetensors as safetensors_module
import mvc.repo.manifest as manifest_module
from mvc.repo import Manifest, Repo

SHARDS = 200


@pytest.fixture
def counts(monkeypatch):
    """Header parses and manifest reads, counted wherever mvc calls them."""
    seen = {"parses": 0, "manifests": 0}
    real_parse = safetensors_module.parse_header
    real_from_bytes = Manifest.from_bytes.__func__

    def parse(*args, **kwargs):
        seen["parses"] += 1
        return real_parse(*args, **kwargs)

    def from_bytes(cls, *args, **kwargs):
        seen["manifests"] += 1
        return real_from_bytes(cls, *args, **kwargs)

    monkeypatch.setattr(safetensors_module, "parse_header", parse)
    monkeypatch.setattr(manifest_module, "parse_header", parse)
    monkeypatch.setattr(Manifest, "from_bytes", classmethod(from_bytes))

    def reset() -> dict[str, int]:
        taken = dict(seen)
        seen.update(parses=0, manifests=0)
        return taken

    return reset


def write_shards(folder, first: int, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(first, first + count):
        weights = {f"layer.{i}.weight": rng.standard_normal((4, 3)).astype(np.float32)}
        write_safetensors_np(folder / f"model-{i:05d}.safetensors", weights)


def test_adding_many_shards_is_linear(tmp_path, counts):
    repo = Repo.init(tmp_path / "repo")
    folder = repo.root / "model"
    write_shards(folder, 0, SHARDS)
    counts()
    assert len(repo.add([folder])) == SHARDS
    assert counts() == {"parses": SHARDS, "manifests": 0}  # one parse per new shard
    repo.commit("base")

    write_shards(folder, 0, SHARDS, seed=1)  # every shard changed: delta against itself
    counts()
    assert len(repo.add([folder])) == SHARDS
    # Its header, and its staged manifest (whose header is checked too), per shard.
    assert counts() == {"parses": 2 * SHARDS, "manifests": SHARDS}
    repo.commit("tuned")

    write_shards(folder, SHARDS, SHARDS)  # new shards beside staged ones
    counts()
    assert len(repo.add([folder])) == SHARDS
    # The staged siblings are read once for the folder, not once per new shard.
    assert counts() == {"parses": 2 * SHARDS, "manifests": SHARDS}
    assert not repo.status().unstaged
