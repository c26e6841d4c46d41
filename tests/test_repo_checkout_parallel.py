"""Checkout decodes chunks on a pool straight into the file (mvc.repo.materialize).

The bytes must not depend on the thread count; a fine-tune's checkout takes unchanged
chunks and delta bases from the old work-tree file instead of decoding them; and old
bytes that are not what the index says are never trusted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from model_factory import fine_tuned, random_weights, snapshot, write_model_folder

from mvc.errors import MvcError
from mvc.repo import Repo
from mvc.repo.materialize import WorktreeChunks, materialize
from mvc.store.objects import ObjectStore

SHARD = "model/model-00001-of-00002.safetensors"


def _weights() -> dict[str, np.ndarray]:
    return random_weights(3, rows=512, cols=96)


@pytest.fixture
def two_versions(tmp_path) -> tuple[Path, dict[str, bytes], dict[str, bytes]]:
    """main: a bf16 base in two shards; ft: half its tensors fine-tuned, the rest kept."""
    root = tmp_path / "repo"
    Repo.init(root).close()
    base = _weights()
    write_model_folder(root / "model", base, bf16=True, shards=2)
    with Repo.open(root) as repo:
        repo.add([root / "model"])
        repo.commit("base")
        main_files = snapshot(root)
        repo.switch("ft", create=True)
        changed = ("embeddings.weight", "layer.0.weight", "layer.1.bias")
        write_model_folder(root / "model", fine_tuned(base, 5, only=changed), bf16=True, shards=2)
        repo.add([root / "model"])
        repo.commit("fine-tune")
        ft_files = snapshot(root)
    assert ft_files != main_files
    return root, main_files, ft_files


@pytest.mark.parametrize("threads", ["1", "4"])
def test_checkout_gives_the_same_bytes_with_any_thread_count(two_versions, monkeypatch, threads):
    root, main_files, ft_files = two_versions
    monkeypatch.setenv("MVC_THREADS", threads)
    with Repo.open(root) as repo:
        for _ in range(2):
            repo.switch("main")
            assert snapshot(root) == main_files
            repo.switch("ft")
            assert snapshot(root) == ft_files
        repo.checkout("main", paths=[root / "model"])  # a restore decodes from the store alone
        assert snapshot(root) == main_files


def test_fine_tune_checkout_decodes_only_what_changed(two_versions, monkeypatch):
    """Switching base -> fine-tune decodes each changed chunk once, on its base's old bytes:
    no object of the base is decoded, and unchanged chunks are copied, not decoded."""
    root, _, ft_files = two_versions
    with Repo.open(root) as repo:
        repo.switch("main")
        base_ids = {oid for m in repo.model_files("main").values() for oid in m.object_ids()}
        ft_ids = {oid for m in repo.model_files("ft").values() for oid in m.object_ids()}
        decoded: list[str] = []
        real = ObjectStore._decode

        def spy(self, oid, stored, known=None):
            decoded.append(oid)
            return real(self, oid, stored, known)

        monkeypatch.setattr(ObjectStore, "_decode", spy)
        repo.switch("ft")
    assert snapshot(root) == ft_files
    assert sorted(decoded) == sorted(ft_ids - base_ids)


def test_old_bytes_that_do_not_match_are_not_trusted(two_versions, tmp_path):
    """A work-tree file changed behind the index's back serves neither as an unchanged
    chunk nor as a delta base: the checkout decodes from the store and is still exact."""
    root, _, ft_files = two_versions
    with Repo.open(root) as repo:
        repo.switch("main")
        tampered = tmp_path / "tampered.safetensors"
        shutil.copyfile(root / SHARD, tampered)
        data = bytearray(tampered.read_bytes())
        start = 8 + int.from_bytes(data[:8], "little")
        data[start:] = bytes(b ^ 0x5A for b in data[start:])  # every tensor byte differs
        tampered.write_bytes(data)
        known = WorktreeChunks()
        known.add_file(tampered, repo.model_files("main")[SHARD])
        out = tmp_path / "out.safetensors"
        try:
            materialize(repo.store, repo.model_files("ft")[SHARD], out, known)
        finally:
            known.close()
    assert out.read_bytes() == ft_files[SHARD]


def test_a_failed_materialize_leaves_the_file_and_no_temp(two_versions):
    root, main_files, _ = two_versions
    with Repo.open(root) as repo:
        repo.switch("main")
        manifest = repo.model_files("ft")[SHARD]
        victim = next(iter(set(manifest.object_ids()) - set(repo.model_files("main")[SHARD].object_ids())))
        repo.store.path(victim).unlink()
        with pytest.raises(MvcError):
            materialize(repo.store, manifest, root / SHARD)
    assert snapshot(root) == main_files
    assert not [p for p in (root / "model").iterdir() if p.name.endswith(".tmp")]
