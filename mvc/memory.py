"""Keep large freed buffers in the process instead of handing them back to the OS.

A merge allocates and frees the same few buffer sizes (decoded chunks, compute windows,
merged chunks) thousands of times. glibc returns big blocks to the kernel on free (mmap'd
blocks, and heap tops above the trim threshold), so every reuse page-faults its memory in
again: measured at about a fifth of a MiniLM merge's wall time as system time. Raising the
thresholds to a few chunk sizes makes those blocks reusable; the cost is that peak memory
stays reserved until the process exits, which for a command-line process is its lifetime.
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


def reuse_large_buffers(block_bytes: int) -> bool:
    """Let blocks up to ``block_bytes`` (and a heap top of 4x that) be reused; True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(
        mallopt(_M_MMAP_THRESHOLD, block_bytes)
        and mallopt(_M_TRIM_THRESHOLD, 4 * block_bytes)
        and mallopt(_M_TOP_PAD, block_bytes)
    )
