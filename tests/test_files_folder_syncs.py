"""Batched folder fsyncs (`mvc.files.FolderSyncs`): each folder once, and never a delta
object whose base's rename is not yet durable."""

from __future__ import annotations

import os
import threading

import numpy as np

import mvc.files
from mvc.files import FolderSyncs, atomic_write
from mvc.store import ObjectStore


def _record_fsyncs(monkeypatch) -> list:
    synced: list = []
    real = mvc.files.fsync_dir

    def fsync_dir(folder):
        synced.append(folder)
        real(folder)

    monkeypatch.setattr(mvc.files, "fsync_dir", fsync_dir)
    return synced


def test_a_batch_fsyncs_each_folder_once_at_its_flush(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    folders = [tmp_path / name for name in "abcd"]
    syncs = FolderSyncs()
    for i in range(20):
        folder = folders[i % 4]
        syncs.mkdir(folder)
        atomic_write(folder / f"f{i}", b"x%d" % i, folder_syncs=syncs)
    assert synced == []  # every file is complete already; only the folders wait
    assert (folders[1] / "f5").read_bytes() == b"x5"
    syncs.flush()
    assert sorted(synced) == sorted([tmp_path, *folders])  # tmp_path: the new folders
    syncs.flush()
    assert len(synced) == 5


def test_durable_fsyncs_only_what_no_fsync_covered_yet(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    syncs = FolderSyncs()
    atomic_write(tmp_path / "a", b"a", folder_syncs=syncs)
    syncs.durable(tmp_path / "a")
    syncs.durable(tmp_path / "a")
    assert synced == [tmp_path]
    atomic_write(tmp_path / "b", b"b", folder_syncs=syncs)  # renamed after that fsync
    syncs.durable(tmp_path / "a")
    assert synced == [tmp_path]
    syncs.durable(tmp_path / "b")
    assert synced == [tmp_path, tmp_path]
    (tmp_path / "old").write_bytes(b"")
    syncs.durable(tmp_path / "old")  # not the batch's: its writer made it durable
    syncs.flush()
    assert synced == [tmp_path, tmp_path]


def test_threads_wait_for_the_fsync_in_flight_instead_of_repeating_it(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    synced: list = []

    def slow_fsync_dir(folder):
        synced.append(folder)
        started.set()
        release.wait(10)

    monkeypatch.setattr(mvc.files, "fsync_dir", slow_fsync_dir)
    syncs = FolderSyncs()
    atomic_write(tmp_path / "a", b"a", folder_syncs=syncs)
    first = threading.Thread(target=syncs.durable, args=(tmp_path / "a",))
    first.start()
    started.wait(10)
    second = threading.Thread(target=syncs.durable, args=(tmp_path / "a",))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # it waits for the first thread's fsync to finish
    release.set()
    first.join(10)
    second.join(10)
    assert synced == [tmp_path]


def test_a_received_delta_appears_only_after_its_base_is_durable(tmp_path, monkeypatch):
    source = ObjectStore(tmp_path / "source")
    base = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    tuned = base + np.float32(1e-3)
    base_id = source.put(base.tobytes(), "F32", [4096])
    delta_id = source.put(tuned.tobytes(), "F32", [4096], base=base_id)
    assert source.info(delta_id).base == base_id
    events: list = []
    real_fsync_dir, real_replace = mvc.files.fsync_dir, os.replace

    def fsync_dir(folder):
        events.append(("fsync", folder))
        real_fsync_dir(folder)

    def replace(src, dst):
        events.append(("rename", dst))
        real_replace(src, dst)

    monkeypatch.setattr(mvc.files, "fsync_dir", fsync_dir)
    monkeypatch.setattr(os, "replace", replace)
    store, syncs = ObjectStore(tmp_path / "target"), FolderSyncs()
    store.write_raw(base_id, source.read_raw(base_id), None, syncs)
    store.write_raw(delta_id, source.read_raw(delta_id), None, syncs)
    delta_renamed = events.index(("rename", store.path(delta_id)))
    before = events[:delta_renamed]
    assert ("fsync", store.path(base_id).parent) in before  # the base's rename
    assert ("fsync", store.objects) in before  # the base's new fan-out folder
    syncs.flush()
    assert store.get(delta_id) == tuned.tobytes()
