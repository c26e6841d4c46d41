"""The numpy-free half of the codecs: codec ids, their error, and the frame-table rules.

Everything an object's header says about its payload (which codec, how many zstd frames,
what each frame must declare) is checked here without decoding anything, so commands that
only read, check or copy stored objects (push, fsck of headers, a clone's negotiation)
never pay for importing numpy. The transforms themselves are in ``mvc.store.codecs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum

import zstandard

from mvc.store.chunking import iter_pieces

# How the codecs run their per-piece work: builtin ``map``, or a thread pool's.
Mapper = Callable[[Callable, Iterable], Iterator]


class Codec(IntEnum):
    """Codec ids as recorded in the object header."""

    RAW = 0
    PLANES = 1
    XOR = 2
    SUB = 3

    @property
    def is_delta(self) -> bool:
        return self in (Codec.XOR, Codec.SUB)


class CodecError(Exception):
    """Encoded data does not decode; the store turns it into ``CorruptObjectError``."""


def frame_count(raw_size: int, itemsize: int, piece_bytes: int) -> int:
    """Number of zstd frames a planed object of ``raw_size`` bytes has."""
    return -(-raw_size // piece_bytes) * itemsize


def check_frames(frames: list[memoryview], raw_size: int, itemsize: int, piece_bytes: int) -> None:
    """Check every frame declares exactly the plane size it must decode to.

    Done before any decoding, so a hostile object cannot make us allocate more than its
    frames honestly describe: a frame without a content size, or with a different one, is
    refused outright.
    """
    if len(frames) != frame_count(raw_size, itemsize, piece_bytes):
        raise CodecError("wrong number of frames")
    for p, (start, stop) in enumerate(iter_pieces(raw_size, itemsize, piece_bytes)):
        plane_size = (stop - start) // itemsize
        for frame in frames[p * itemsize : (p + 1) * itemsize]:
            try:
                declared = zstandard.frame_content_size(frame)
            except zstandard.ZstdError as exc:
                raise CodecError(f"bad zstd frame header ({exc})") from None
            if declared != plane_size:
                raise CodecError(
                    f"zstd frame declares {declared} bytes where the header implies {plane_size}"
                )
