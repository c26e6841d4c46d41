"""Hostile and damaged object files fail cleanly, without allocating what they declare."""

from __future__ import annotations

import tracemalloc

import pytest
import zstandard

from mvc.errors import CorruptObjectError
from mvc.store import ObjectStore, object_id
from mvc.store.chunking import PIECE_BYTES
from mvc.store.codecs import Codec
from mvc.store.objfile import pack_header, trailer

MiB = 1024 * 1024


def build(codec, dtype, shape, raw_size, frames, depth=0, base=None, piece_bytes=PIECE_BYTES):
    sizes = [] if codec is Codec.RAW else [len(f) for f in frames]
    header = pack_header(codec, dtype, shape, raw_size, depth, base, piece_bytes, sizes)
    chunks = [header, *frames]
    return b"".join([*chunks, trailer(chunks)])


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(tmp_path / "mvc")
    yield s
    s.close()


def peak_while(fn) -> tuple[int, str]:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObjectError) as exc:
            fn()
        return tracemalloc.get_traced_memory()[1], str(exc.value)
    finally:
        tracemalloc.stop()


def test_huge_declared_size_is_refused_without_allocating(store):
    oid = "1" * 32
    frame = zstandard.ZstdCompressor().compress(b"\0" * 16)
    for stored in (
        build(Codec.PLANES, "F32", (2**40,), 2**42, [frame] * 4),
        build(Codec.RAW, "U8", (2**40,), 2**40, [b"\0" * 16]),
    ):
        peak, msg = peak_while(lambda s=stored: store.write_raw(oid, s))
        assert peak < 4 * MiB
        assert oid in msg
        assert not store.has(oid)


def test_zstd_bomb_with_lying_content_size_is_refused(store):
    n = 1000
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (256 * MiB))
    fhd = bomb[4]
    assert fhd >> 5 == 0  # no content size, window descriptor follows
    # Claim n bytes of content (4-byte Frame_Content_Size field) in front of 256 MiB of data.
    lying = bomb[:4] + bytes([fhd | 0x80]) + bomb[5:6] + n.to_bytes(4, "little") + bomb[6:]
    assert zstandard.frame_content_size(lying) == n
    oid = object_id("U8", (n,), bytes(n))
    peak, msg = peak_while(
        lambda: store.write_raw(oid, build(Codec.PLANES, "U8", (n,), n, [lying]))
    )
    assert peak < 16 * MiB
    assert oid in msg


@pytest.mark.parametrize(
    "frame",
    [
        zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 1000),
        zstandard.ZstdCompressor().compress(b"\0" * (64 * MiB)),
        b"not a zstd frame",
    ],
    ids=["no-content-size", "wrong-content-size", "garbage"],
)
def test_frames_not_declaring_the_plane_size_are_refused(store, frame):
    oid = object_id("U8", (1000,), bytes(1000))
    peak, msg = peak_while(
        lambda: store.write_raw(oid, build(Codec.PLANES, "U8", (1000,), 1000, [frame]))
    )
    assert peak < 4 * MiB and oid in msg


def test_every_truncation_is_refused(store):
    data = bytes(range(256)) * 40
    oid = store.put(data, "U8", (len(data),))
    stored = store.read_raw(oid)
    other = ObjectStore(store.root.parent / "other")
    for cut in range(len(stored)):
        with pytest.raises(CorruptObjectError, match=oid):
            other.write_raw(oid, stored[:cut])
    assert list(other.ids()) == []


def test_a_delta_chain_cannot_loop(store):
    a, b = "a" * 32, "b" * 32
    frame = zstandard.ZstdCompressor().compress(b"\0" * 4)
    for oid, base, depth in ((a, b, 2), (b, a, 1)):
        store.path(oid).parent.mkdir(parents=True, exist_ok=True)
        store.path(oid).write_bytes(
            build(Codec.XOR, "U8", (4,), 4, [frame], depth=depth, base=base)
        )
    with pytest.raises(CorruptObjectError, match=f"object {b} is corrupt: delta base {a}"):
        store.get(a)


@pytest.mark.parametrize(
    "header_args, reason",
    [
        ((Codec.PLANES, "U8", (4,), 5, 0, None, 4), "raw size"),
        ((Codec.PLANES, "U8", (4,), 4, 1, None, 4), "depth"),
        ((Codec.PLANES, "F32", (4,), 16, 0, None, 6), "piece size"),
        ((Codec.RAW, "U8", (4,), 4, 0, None, 4), "piece size"),
    ],
)
def test_inconsistent_headers_are_refused(store, header_args, reason):
    header = pack_header(*header_args, [])
    stored = header + trailer([header])
    with pytest.raises(CorruptObjectError, match=reason):
        store.write_raw("2" * 32, stored)
