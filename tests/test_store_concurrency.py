"""Concurrent writers (threads and processes) leave a consistent store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mvc.store import ObjectStore, object_id
from mvc.store.objects import TEMP_PREFIX


def payloads(seed: int, count: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32).tobytes() for _ in range(count)]


def assert_consistent(store: ObjectStore, expected: set[str]) -> None:
    assert set(store.ids()) == expected
    for oid in expected:
        store.verify(oid)
    assert not list(store.objects.glob(f"*/{TEMP_PREFIX}*"))


def test_threads_putting_same_and_different_objects(tmp_path):
    store = ObjectStore(tmp_path / "mvc")
    shared = payloads(0, 4, 20_000)
    big = payloads(1, 1, 9 * 1024 * 1024 // 4)[0]  # several pieces: exercises the piece pool
    base = store.put(shared[0], "F32", (20_000,))

    def worker(i: int) -> list[str]:
        own = payloads(100 + i, 2, 5_000)
        ids = [store.put(d, "F32", (20_000,), base=base) for d in shared]
        ids += [store.put(d, "F32", (5_000,)) for d in own]
        if i % 4 == 0:
            ids.append(store.put(big, "F32", (len(big) // 4,)))
        ids += store.put_many([(d, "F32", (20_000,)) for d in reversed(shared)])
        return ids

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    expected = {oid for ids in results for oid in ids} | {base}
    assert len(expected) == 4 + 8 * 2 + 1
    assert_consistent(store, expected)
    store.close()


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mvc.store import ObjectStore
    store = ObjectStore(sys.argv[1])
    rng = np.random.default_rng(0)
    shared = [rng.standard_normal(30_000).astype(np.float32).tobytes() for _ in range(6)]
    own = np.random.default_rng(int(sys.argv[2])).standard_normal(30_000).astype(np.float32)
    ids = store.put_many([(d, "F32", (30_000,)) for d in shared])
    for d in shared:
        store.put(d, "F32", (30_000,), base=ids[0])
    store.put(own.tobytes(), "F32", (30_000,), base=ids[0])
    """
)


def test_two_processes_putting_the_same_objects(tmp_path):
    root = tmp_path / "mvc"
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(seed)]) for seed in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rng = np.random.default_rng(0)
    shared = [rng.standard_normal(30_000).astype(np.float32).tobytes() for _ in range(6)]
    expected = {object_id("F32", (30_000,), d) for d in shared}
    for seed in (1, 2):
        own = np.random.default_rng(seed).standard_normal(30_000).astype(np.float32)
        expected.add(object_id("F32", (30_000,), own.tobytes()))
    assert_consistent(ObjectStore(root), expected)
