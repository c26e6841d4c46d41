"""Keep large freed buffers in the process instead of handing them back to the OS.

A merge allocates and frees the same few buffer sizes (decoded chunks, compute windows,
merged chunks) thousands of times. glibc returns big blocks to the kernel on free (mmap'd
blocks, and heap tops above the trim threshold), so every reuse page-faults its memory in
again: measured at about a fifth of a MiniLM merge's wall time as system time. Raising the
thresholds to a few chunk sizes makes those blocks reusable; the cost is that peak memory
stays reserved until the process exits, which for a command-line process is its lifetime.

The lock (``return_large_buffers``) wants the opposite: it frees buffers of many different
sizes (whole tensors of each shape, fp32 copies for the equivalence check, compute windows)
between small allocations, and glibc's dynamic threshold (raised to each freed mmap'd size,
up to 32 MiB) puts them on the heap, where the holes between them were measured to grow
with the number of layers (70 MiB more at 16 layers than at 4, for the same tensor sizes).
Layer-free (no mvc imports); a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all([bool(mallopt(param, value)) for param, value in settings])


def reuse_large_buffers(block_bytes: int) -> bool:
    """Let blocks up to ``block_bytes`` (and a heap top of 4x that) be reused; True if applied."""
    return _mallopt(
        (
            (_M_MMAP_THRESHOLD, block_bytes),
            (_M_TRIM_THRESHOLD, 4 * block_bytes),
            (_M_TOP_PAD, block_bytes),
        )
    )


def return_large_buffers(block_bytes: int) -> bool:
    """Map every block over ``block_bytes`` on its own and give it back on free (a fixed
    threshold, so glibc stops moving it up); True if applied."""
    return _mallopt(((_M_MMAP_THRESHOLD, block_bytes), (_M_TRIM_THRESHOLD, block_bytes)))
