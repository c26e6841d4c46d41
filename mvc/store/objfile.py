"""The byte layout of one object file (see docs/format-objects.md).

A small fixed header says everything needed to decode and to bound the work: dtype and
shape, the declared raw size, the codec, the delta base and depth, the piece size and the
length of every zstd frame. A trailing xxh3-64 of the whole file catches any flipped byte
(even in fields a decoder could ignore) before any parsing or decompression starts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from mvc.errors import FormatError
from mvc.formats.dtypes import get_dtype
from mvc.store.codec_header import Codec, CodecError, frame_count

MAGIC = b"MVCO"
FORMAT_VERSION = 1
MAX_NDIM = 64
MAX_DTYPE_NAME = 15
MAX_PIECE_BYTES = 64 * 1024 * 1024
#: A delta chain is at most this long (the store writes a full object instead), so reading
#: any object costs at most MAX_DELTA_DEPTH + 1 decodes.
MAX_DELTA_DEPTH = 12
TRAILER_SIZE = 8
# Enough to hold every header field but the frame table, whatever the dtype and ndim.
HEADER_PREFIX_MAX = 4 + 1 + 1 + 1 + MAX_DTYPE_NAME + 1 + 8 * MAX_NDIM + 8 + 1 + 16 + 4


@dataclass(frozen=True)
class ObjectHeader:
    """The decoded header of an object file."""

    codec: Codec
    dtype: str
    shape: tuple[int, ...]
    raw_size: int
    depth: int
    base: str | None
    piece_bytes: int
    frame_sizes: tuple[int, ...]
    header_size: int  # bytes up to the first payload byte

    @property
    def itemsize(self) -> int:
        return get_dtype(self.dtype).itemsize


def pack_header(
    codec: Codec,
    dtype: str,
    shape: Sequence[int],
    raw_size: int,
    depth: int,
    base: str | None,
    piece_bytes: int,
    frame_sizes: Sequence[int],
) -> bytes:
    """Serialize a header; the payload and the trailer follow it in the file."""
    name = dtype.encode("ascii")
    parts = [
        MAGIC,
        struct.pack("<BBB", FORMAT_VERSION, int(codec), len(name)),
        name,
        struct.pack(f"<B{len(shape)}Q", len(shape), *shape),
        struct.pack("<QB", raw_size, depth),
    ]
    if codec.is_delta:
        assert base is not None
        parts.append(bytes.fromhex(base))
    parts.append(struct.pack(f"<I{len(frame_sizes)}I", piece_bytes, *frame_sizes))
    return b"".join(parts)


def trailer(chunks: Sequence[bytes | memoryview]) -> bytes:
    """The 8-byte xxh3-64 (little-endian) of everything before it."""
    h = xxhash.xxh3_64()
    for chunk in chunks:
        h.update(chunk)
    return struct.pack("<Q", h.intdigest())


class _Reader:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CodecError("object header is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def parse_header(buf: bytes | memoryview) -> ObjectHeader:
    """Parse and validate a header (``buf`` may be the whole file or only its start).

    Every size is checked against the others before anything is allocated from it; the
    frame table is read only if ``buf`` holds it (``frame_sizes`` is empty otherwise, and
    ``header_size`` then still gives where the payload starts).
    """
    r = _Reader(memoryview(buf).cast("B"))
    if bytes(r.take(4)) != MAGIC:
        raise CodecError("not an mvc object (bad magic)")
    version, codec_id, name_len = r.unpack("<BBB")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported object format version {version}")
    try:
        codec = Codec(codec_id)
    except ValueError:
        raise CodecError(f"unknown codec id {codec_id}") from None
    if not 1 <= name_len <= MAX_DTYPE_NAME:
        raise CodecError("bad dtype name length")
    try:
        dtype = bytes(r.take(name_len)).decode("ascii")
        itemsize = get_dtype(dtype).itemsize
    except (UnicodeDecodeError, FormatError):
        raise CodecError("unknown dtype") from None
    (ndim,) = r.unpack("<B")
    if ndim > MAX_NDIM:
        raise CodecError(f"too many dimensions ({ndim})")
    shape = r.unpack(f"<{ndim}Q")
    raw_size, depth = r.unpack("<QB")
    if math.prod(shape) * itemsize != raw_size:
        raise CodecError("raw size does not match dtype and shape")
    base = bytes(r.take(16)).hex() if codec.is_delta else None
    if (depth == 0) == codec.is_delta:
        raise CodecError(f"delta depth {depth} is impossible for codec {codec.name.lower()}")
    (piece_bytes,) = r.unpack("<I")
    if codec is Codec.RAW:
        if piece_bytes != 0:
            raise CodecError("raw object with a piece size")
        count = 0
    else:
        if not 0 < piece_bytes <= MAX_PIECE_BYTES or piece_bytes % itemsize:
            raise CodecError(f"bad piece size {piece_bytes}")
        count = frame_count(raw_size, itemsize, piece_bytes)
    table_end = r.pos + 4 * count
    frame_sizes: tuple[int, ...] = ()
    if table_end <= len(r.buf):
        frame_sizes = r.unpack(f"<{count}I")
    return ObjectHeader(
        codec, dtype, tuple(shape), raw_size, depth, base, piece_bytes, frame_sizes, table_end
    )


def parse_object(buf: bytes | memoryview) -> tuple[ObjectHeader, list[memoryview]]:
    """Check the trailer, parse the header and slice the payload into frames."""
    view = memoryview(buf).cast("B")
    if len(view) < len(MAGIC) + TRAILER_SIZE:
        raise CodecError("object file is truncated")
    body = view[:-TRAILER_SIZE]
    if trailer([body]) != bytes(view[-TRAILER_SIZE:]):
        raise CodecError("checksum mismatch (the file is damaged)")
    header = parse_header(body)
    payload = body[header.header_size :]
    if header.codec is Codec.RAW:
        if len(payload) != header.raw_size:
            raise CodecError("raw payload has the wrong size")
        return header, [payload]
    if header.header_size > len(body) or sum(header.frame_sizes) != len(payload):
        raise CodecError("frame table does not match the payload")
    frames, pos = [], 0
    for size in header.frame_sizes:
        frames.append(payload[pos : pos + size])
        pos += size
    return header, frames
