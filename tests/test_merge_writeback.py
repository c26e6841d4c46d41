"""The merge's write-behind queue: same objects as direct puts, bounded, errors surface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mvc.merge.writeback import WriteBehind
from mvc.store import ObjectStore


def test_queued_puts_store_what_direct_puts_store(tmp_path):
    store = ObjectStore(tmp_path / "objects")
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4096).astype(np.float32)
    chunks = [base + np.float32(i + 1) * 1e-3 for i in range(5)]
    base_id = store.put(base.tobytes(), "F32", (4096,))
    with WriteBehind(store, max_bytes=2 * 4096 * 4) as writer:
        futures = [
            writer.put(c.tobytes(), "F32", (4096,), base=base_id, base_data=base.tobytes())
            for c in chunks
        ]
    ids = [f.result() for f in futures]
    direct = ObjectStore(tmp_path / "direct")
    direct_base = direct.put(base.tobytes(), "F32", (4096,))
    for oid, c in zip(ids, chunks, strict=True):
        assert store.info(oid).base == base_id  # the base's bytes were used as a delta base
        assert store.get(oid) == c.tobytes()
        # byte-identical files to a plain put with the same base
        assert direct.put(c.tobytes(), "F32", (4096,), base=direct_base) == oid
        assert direct.read_raw(oid) == store.read_raw(oid)


class _SlowStore:
    """Counts puts in flight; each put waits until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0

    def put(self, data, dtype, shape, base=None, base_data=None) -> str:
        self.started += 1
        self.release.wait(5)
        return f"id-{data}"


def test_queued_bytes_are_bounded():
    store = _SlowStore()
    writer = WriteBehind(store, max_bytes=8)
    writer.put(b"abcd", "U8", (4,))
    writer.put(b"efgh", "U8", (4,))
    returned = threading.Event()

    def third() -> None:
        writer.put(b"ijkl", "U8", (4,))
        returned.set()

    blocked = threading.Thread(target=third)
    blocked.start()
    # 12 bytes would be queued: the third put waits for the oldest to be written.
    assert not returned.wait(1.0)
    store.release.set()
    assert returned.wait(5)
    writer.close()
    assert store.started == 3


class _FailingStore:
    def put(self, data, dtype, shape, base=None, base_data=None) -> str:
        raise OSError("disk full")


def test_a_failed_write_is_raised_not_lost():
    with pytest.raises(OSError, match="disk full"):
        with WriteBehind(_FailingStore(), max_bytes=1024) as writer:
            future = writer.put(b"x", "U8", (1,))
    with pytest.raises(OSError, match="disk full"):
        future.result()


def test_large_buffer_reuse_is_applied_on_linux():
    """glibc keeps freed chunk-sized blocks for reuse (a no-op elsewhere, never an error)."""
    import platform
    import sys

    from mvc.memory import reuse_large_buffers

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert reuse_large_buffers(32 * 1024 * 1024) is glibc
    big = np.ones(8 * 1024 * 1024, dtype=np.float32)  # allocations still work afterwards
    assert float(big.sum()) == 8 * 1024 * 1024


def test_returning_large_buffers_is_applied_on_linux():
    """The lock's setting (blocks over 1 MiB mapped on their own) applies where glibc is."""
    import platform
    import sys

    from mvc.memory import return_large_buffers, reuse_large_buffers

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    try:
        assert return_large_buffers(1024 * 1024) is glibc
        big = np.ones(8 * 1024 * 1024, dtype=np.float32)
        assert float(big.sum()) == 8 * 1024 * 1024
    finally:
        reuse_large_buffers(32 * 1024 * 1024)
