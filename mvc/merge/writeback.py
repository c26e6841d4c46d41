"""Storing merged chunks on a background thread, so encoding overlaps the next computation.

Compressing a merged chunk (zstd, delta against the base's chunk) costs about as much as
computing it. Handing each put (and each write of the chunk into the output file) to one
writer thread lets the main thread go on to the next chunk meanwhile. At most ``depth``
tasks wait at a time, each holding its chunk's bytes, so this adds a fixed number of chunks
to peak memory. Tasks run in the order they were queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Putter(Protocol):
    def put(
        self,
        data: Any,
        dtype: str,
        shape: Any,
        base: str | None = None,
        base_data: bytes | None = None,
    ) -> str: ...


class WriteBehind:
    """``put`` returns a future of the object id; ``close`` waits for every write."""

    def __init__(self, store: Putter, depth: int = 2) -> None:
        self._store = store
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvc-put")
        self._pending: deque[Future[str]] = deque()

    def put(
        self,
        data: Any,
        dtype: str,
        shape: Any,
        base: str | None = None,
        base_data: bytes | None = None,
    ) -> Future[str]:
        """Queue ``store.put`` (``base_data``: the base's bytes, when the caller has them)."""
        return self.submit(self._store.put, data, dtype, shape, base, base_data)

    def submit(self, task: Callable[..., T], *args: Any) -> Future[T]:
        """Queue any write; waits first while ``depth`` tasks are pending."""
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        future = self._pool.submit(task, *args)
        self._pending.append(future)
        return future

    def drain(self, *, raise_errors: bool = True) -> None:
        """Wait for every queued task (re-raising the first failure unless told not to)."""
        while self._pending:
            future = self._pending.popleft()
            if raise_errors:
                future.result()
            else:
                future.exception()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
