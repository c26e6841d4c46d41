"""Lossless tensor codecs: byte planes + zstd, and XOR / zigzag-subtraction deltas.

Every codec works on the raw little-endian bit patterns, viewed as unsigned integers of
the element width, so it is exact for every dtype (including bf16 and fp8, which numpy
cannot interpret) and needs no float arithmetic.

- ``planes``: byte j of every element goes to plane j. For floats this groups the sign and
  exponent bytes, which are highly repetitive, apart from the noisy low mantissa bytes,
  and zstd compresses each plane on its own statistics.
- ``xor``: planes of ``new ^ base``. Unchanged bits become zero.
- ``sub``: planes of ``zigzag(new - base)`` (wrapping subtraction reinterpreted as signed,
  then zigzag so small negative differences are small too). A fine-tune step moves a
  float by a few ulps, which is a small integer difference of the bit patterns even when
  it flips many low bits, so this usually beats XOR.
- ``raw``: the bytes as they are, only when nothing compresses.

Choosing a codec by compressing all the data with every candidate would cost about three
full encodes for a delta, so an object of ``SAMPLE_FROM_BYTES`` or more is first
compressed only on a sample (``SAMPLE_BLOCKS`` evenly spaced blocks, 1/``SAMPLE_SHARE`` of
the data) with each candidate, and then in full with the winner alone. On a MiniLM
fine-tune this chose the same codec as trying everything for every chunk, in fp32 and bf16.

The data is cut into pieces of ``piece_bytes`` (see ``chunking.iter_pieces``); each piece
is byte-planed and every plane is one independent zstd frame. Independent frames let a
thread pool (zstd releases the GIL) keep both cores busy on one large object, and bound
what any single frame may decompress to. A zstd context is not thread-safe, so each
thread keeps its own. Codec ids and the frame-table checks, which need no numpy, are in
``mvc.store.codec_header``.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from mvc.store.chunking import PIECE_BYTES, iter_pieces
from mvc.store.codec_header import Codec, CodecError, Mapper, check_frames

__all__ = ["Codec", "CodecError", "Mapper", "decode", "encode", "sample_spans"]

ZSTD_LEVEL = 1  # measured on a MiniLM fine-tune: level 1 beat 3 in both size and speed
# Below SAMPLE_FROM_BYTES every candidate compresses all the data: a sample of at least a
# quarter of it would save too little. Above, the sample is SAMPLE_BLOCKS blocks of
# 1/(SAMPLE_SHARE * SAMPLE_BLOCKS) of the data each, and never under SAMPLE_BLOCK_MIN bytes.
SAMPLE_FROM_BYTES = 512 * 1024
SAMPLE_BLOCKS = 16
SAMPLE_SHARE = 16
SAMPLE_BLOCK_MIN = 8 * 1024

_UINTS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_INTS = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _zigzag(diff: np.ndarray, itemsize: int) -> np.ndarray:
    """Map wrapped differences to 0, 1, 2, ... for 0, -1, 1, ... (in place where possible)."""
    signed = diff.view(_INTS[itemsize])
    sign = signed >> (8 * itemsize - 1)  # arithmetic shift: all ones when negative
    np.left_shift(signed, 1, out=signed)
    np.bitwise_xor(signed, sign, out=signed)
    return diff


def _unzigzag(z: np.ndarray) -> np.ndarray:
    low = z & 1
    np.right_shift(z, 1, out=z)
    np.negative(low, out=low)  # 0 -> 0, 1 -> all ones (unsigned wrap)
    np.bitwise_xor(z, low, out=z)
    return z


def _forward(codec: Codec, new: np.ndarray, base: np.ndarray | None, itemsize: int) -> np.ndarray:
    if codec is Codec.PLANES:
        return new
    if codec is Codec.XOR:
        return np.bitwise_xor(new, base)
    return _zigzag(np.subtract(new, base), itemsize)


def _inverse(codec: Codec, coded: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    if codec is Codec.PLANES:
        return coded
    if codec is Codec.XOR:
        return np.bitwise_xor(coded, base, out=coded)
    return np.add(_unzigzag(coded), base, out=coded)


def _split_planes(values: np.ndarray, itemsize: int) -> np.ndarray:
    """(n,) uint array -> (itemsize, n) uint8 array; row j holds byte j (little-endian).

    2-byte values (bf16, fp16) are split by casts, about twice as fast as the strided
    transpose, which stays the faster way for wider values (measured on 4 MiB pieces).
    """
    if itemsize != 2:
        return np.ascontiguousarray(values.view(np.uint8).reshape(-1, itemsize).T)
    planes = np.empty((2, values.shape[0]), dtype=np.uint8)
    np.copyto(planes[0], values, casting="unsafe")  # the low byte
    np.copyto(planes[1], values >> 8, casting="unsafe")
    return planes


def _encode_piece(
    codecs: tuple[Codec, ...], new: np.ndarray, base: np.ndarray | None, itemsize: int
) -> list[list[bytes]]:
    cctx = _compressor()
    out = []
    for codec in codecs:
        planes = _split_planes(_forward(codec, new, base, itemsize), itemsize)
        out.append([cctx.compress(plane) for plane in planes])
    return out


def sample_spans(nbytes: int, itemsize: int) -> list[tuple[int, int]]:
    """Byte ranges of the sample that picks a codec, or ``[]`` when all the data is tried.

    ``SAMPLE_BLOCKS`` equal blocks aligned to ``itemsize``, the first at the start and the
    last at the end, evenly spaced between: a deterministic function of the size, so the
    same data always gets the same codec, and spread over the whole chunk, so rows that
    changed unevenly (a fine-tune's embeddings) are all represented.
    """
    if nbytes < SAMPLE_FROM_BYTES:
        return []
    block = max(nbytes // (SAMPLE_SHARE * SAMPLE_BLOCKS), SAMPLE_BLOCK_MIN)
    block -= block % itemsize
    last = nbytes - block
    starts = [last * i // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)]
    return [(a - a % itemsize, a - a % itemsize + block) for a in starts]


def _sample_winner(
    planed: tuple[Codec, ...],
    new: np.ndarray,
    base: np.ndarray | None,
    itemsize: int,
    spans: list[tuple[int, int]],
    mapper: Mapper,
) -> Codec:
    """The planed codec that compresses the sample ``spans`` smallest (first one on ties)."""

    def gather(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values[a // itemsize : b // itemsize] for a, b in spans])

    new_s = gather(new)
    base_s = None if base is None else gather(base)

    def size(codec: Codec) -> int:
        return sum(map(len, _encode_piece((codec,), new_s, base_s, itemsize)[0]))

    sizes = list(mapper(size, planed))
    return planed[sizes.index(min(sizes))]


def encode(
    data: memoryview,
    itemsize: int,
    base: memoryview | bytes | None,
    *,
    piece_bytes: int = PIECE_BYTES,
    mapper: Mapper = map,
    candidates: tuple[Codec, ...] | None = None,
) -> tuple[Codec, list[bytes]]:
    """Encode with the candidate codec that compresses best.

    The default candidates are ``raw`` and ``planes``, plus ``xor`` and ``sub`` when a
    ``base`` (same length as ``data``) is given. Among the compressing candidates, the
    winner on a sample (``sample_spans``) is the only one to compress all the data; small
    data is compressed in full by each of them. ``raw`` wins only when the result is not
    smaller, frame length table included. Returns the codec and its frames (piece-major,
    plane-minor; for ``raw`` the data itself as the single frame).
    """
    if candidates is None:
        candidates = (Codec.RAW, Codec.PLANES)
        if base is not None:
            candidates += (Codec.XOR, Codec.SUB)
    if base is None and any(c.is_delta for c in candidates):
        raise ValueError("delta codecs need a base")
    nbytes = data.nbytes
    uint = _UINTS[itemsize]
    planed = tuple(c for c in candidates if c is not Codec.RAW)
    new_all = np.frombuffer(data, dtype=uint)
    base_all = None if base is None else np.frombuffer(base, dtype=uint)
    spans = sample_spans(nbytes, itemsize)
    if len(planed) > 1 and spans:
        planed = (_sample_winner(planed, new_all, base_all, itemsize, spans, mapper),)

    def work(span: tuple[int, int]) -> list[list[bytes]]:
        a, b = span[0] // itemsize, span[1] // itemsize
        return _encode_piece(
            planed, new_all[a:b], None if base_all is None else base_all[a:b], itemsize
        )

    per_piece = list(mapper(work, iter_pieces(nbytes, itemsize, piece_bytes))) if planed else []
    best: tuple[int, Codec, list[bytes]] | None = None
    for i, codec in enumerate(planed):
        frames = [frame for piece in per_piece for frame in piece[i]]
        size = sum(len(f) for f in frames) + 4 * len(frames)
        if best is None or size < best[0]:
            best = (size, codec, frames)
    if Codec.RAW in candidates and (best is None or nbytes <= best[0]):
        return Codec.RAW, [bytes(data)]  # copied only when raw wins
    if best is None:
        raise ValueError("no candidate codecs")
    return best[1], best[2]


def _decode_piece(
    codec: Codec, frames: list[memoryview], base: np.ndarray | None, values: np.ndarray
) -> None:
    """Decode one piece straight into ``values`` (its slice of the output)."""
    dctx = _decompressor()
    n, itemsize = values.shape[0], values.itemsize
    planes = []
    for frame in frames:
        try:
            plane = dctx.decompress(frame, max_output_size=n)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd frame does not decode ({exc})") from None
        if len(plane) != n:
            raise CodecError("zstd frame decoded to the wrong size")
        planes.append(np.frombuffer(plane, dtype=np.uint8))
    if itemsize == 2:  # high << 8 | low: twice the strided interleave's speed
        np.left_shift(planes[1], 8, out=values, dtype=values.dtype)
        np.bitwise_or(values, planes[0], out=values)
    else:
        interleaved = values.view(np.uint8).reshape(n, itemsize)
        for j, plane in enumerate(planes):
            interleaved[:, j] = plane
    _inverse(codec, values, base)


def decode(
    codec: Codec,
    frames: list[memoryview],
    raw_size: int,
    itemsize: int,
    base: bytes | memoryview | None,
    *,
    piece_bytes: int = PIECE_BYTES,
    mapper: Mapper = map,
) -> memoryview:
    """Inverse of ``encode``: the original bytes, exactly. Raises ``CodecError``.

    Every piece decodes into its place in one output buffer, so nothing is copied after
    decompression; the result is a view of that buffer (or of ``frames`` for ``raw``).
    """
    if codec is Codec.RAW:
        if len(frames) != 1 or frames[0].nbytes != raw_size:
            raise CodecError("raw payload has the wrong size")
        return frames[0].cast("B")
    if codec.is_delta and (base is None or memoryview(base).nbytes != raw_size):
        raise CodecError("delta base has the wrong size")
    check_frames(frames, raw_size, itemsize, piece_bytes)
    uint = _UINTS[itemsize]
    base_all = None if base is None else np.frombuffer(base, dtype=uint)
    out = np.empty(raw_size // itemsize, dtype=uint)

    def work(item: tuple[int, tuple[int, int]]) -> None:
        p, (start, stop) = item
        a, b = start // itemsize, stop // itemsize
        _decode_piece(
            codec,
            frames[p * itemsize : (p + 1) * itemsize],
            None if base_all is None else base_all[a:b],
            out[a:b],
        )

    for _ in mapper(work, enumerate(iter_pieces(raw_size, itemsize, piece_bytes))):
        pass
    return memoryview(out).cast("B")
