"""Knobs that trade speed against memory and never change a result.

A merge computes on row windows of at most ``window_bytes()`` (temporaries scale with it),
decodes a tensor once for all its passes when its inputs fit in ``cache_bytes()``, and runs
``threads()`` tensors at once. Strategies give the same bits for any windowing, caching and
thread count (tests/test_merge_invariance.py checks two settings of each), so these only
move time and peak memory. Each is read from the environment when asked, so a process can
be tuned without code changes:

- ``MVC_WINDOW_BYTES`` (default 256 KiB): compute window (small enough that a window's
  fp32 temporaries stay in the L2 cache: measured 1.4x faster TIES than 4 MiB windows);
- ``MVC_CACHE_BYTES`` (default 192 MiB): decoded-input cache per tensor;
- ``MVC_THREADS`` (default: the CPUs this process may run on): tensors merged at once.

The stored chunk size is deliberately not among them: chunk boundaries are part of what a
commit stores (a parent's chunk is the delta base of the same chunk index), so they are a
parameter of ingestion (``mvc.repo.ingest.ingest_file(chunk_bytes=...)``), fixed per repository.
Layer-free: imports only ``mvc.errors``.
"""

from __future__ import annotations

import os

from mvc.errors import MvcError

MIB = 1024 * 1024
DEFAULT_WINDOW_BYTES = MIB // 4
DEFAULT_CACHE_BYTES = 192 * MIB


def _positive(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise MvcError(f"{name} must be a positive integer, got {raw!r}")
    return value


def window_bytes() -> int:
    """Bytes of storage values per compute window (``MVC_WINDOW_BYTES``)."""
    return _positive("MVC_WINDOW_BYTES", DEFAULT_WINDOW_BYTES)


def cache_bytes() -> int:
    """Decoded base + inputs up to which a tensor is read once, not per pass (``MVC_CACHE_BYTES``)."""
    return _positive("MVC_CACHE_BYTES", DEFAULT_CACHE_BYTES)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads() -> int:
    """Tensors a CPU merge computes at once (``MVC_THREADS``; default: every CPU)."""
    return _positive("MVC_THREADS", cpu_count())
