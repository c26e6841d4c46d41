"""Storing merged chunks on a background thread, so encoding overlaps the next computation.

Compressing a merged chunk (zstd, delta against the base's chunk) costs about as much as
computing it, and each object write waits for two fsyncs. Handing puts (and writes of the
chunk into the output file) to a writer thread lets the main thread go on meanwhile. The
queue is bounded in bytes, not tasks: a tensor's small objects (TALL masks, biases) queue
freely, while at most ``max_bytes`` of chunk data waits, so this adds a fixed amount to
peak memory. More writer threads were measured no faster on two cores.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from mvc.store import ObjectStore

T = TypeVar("T")


class WriteBehind:
    """``put`` returns a future of the object id; ``close`` waits for every write.

    Safe to call from several threads (the executor computes tensors on a pool).
    """

    def __init__(self, store: ObjectStore, max_bytes: int, workers: int = 1) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mvc-put")
        self._pending: deque[tuple[Future[Any], int]] = deque()
        self._pending_bytes = 0
        self._lock = threading.Lock()

    def put(
        self,
        data: Any,
        dtype: str,
        shape: Any,
        base: str | None = None,
        base_data: bytes | None = None,
    ) -> Future[str]:
        """Queue ``store.put`` (``base_data``: the base's bytes, when the caller has them)."""
        nbytes = memoryview(data).nbytes
        return self.submit(self._store.put, data, dtype, shape, base, base_data, nbytes=nbytes)

    def submit(self, task: Callable[..., T], *args: Any, nbytes: int = 0) -> Future[T]:
        """Queue any write holding ``nbytes`` of data; waits first while the queue is full."""
        with self._lock:
            while self._pending and (
                self._pending[0][0].done() or self._pending_bytes + nbytes > self._max_bytes
            ):
                self._settle_oldest(raise_errors=True)
            future = self._pool.submit(task, *args)
            self._pending.append((future, nbytes))
            self._pending_bytes += nbytes
            return future

    def _settle_oldest(self, *, raise_errors: bool) -> None:
        future, nbytes = self._pending.popleft()
        self._pending_bytes -= nbytes
        if raise_errors:
            future.result()
        else:
            future.exception()

    def drain(self, *, raise_errors: bool = True) -> None:
        """Wait for every queued task (re-raising the first failure unless told not to)."""
        with self._lock:
            while self._pending:
                self._settle_oldest(raise_errors=raise_errors)

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
