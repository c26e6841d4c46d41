"""Codec round trips: every codec, every dtype, bit for bit, across piece boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvc.formats.dtypes import DTYPES
from mvc.store import codecs
from mvc.store.codecs import Codec, CodecError

DTYPE_NAMES = sorted(DTYPES)


@st.composite
def tensors(draw, with_base: bool = True):
    """(dtype name, itemsize, data, base or None, piece_bytes) with random contents."""
    name = draw(st.sampled_from(DTYPE_NAMES))
    itemsize = DTYPES[name].itemsize
    n = draw(st.integers(0, 300))
    data = draw(st.binary(min_size=n * itemsize, max_size=n * itemsize))
    base = None
    if with_base:
        mode = draw(st.sampled_from(["random", "near", "same"]))
        if mode == "random":
            base = draw(st.binary(min_size=n * itemsize, max_size=n * itemsize))
        else:
            arr = np.frombuffer(data, dtype=DTYPES[name].uint).copy()
            if mode == "near" and n:
                arr += np.asarray(
                    draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), dtype=np.int64
                ).astype(arr.dtype)
            base = arr.tobytes()
    piece_bytes = itemsize * draw(st.integers(1, 64))
    return name, itemsize, data, base, piece_bytes


def roundtrip(codec: Codec, itemsize: int, data: bytes, base, piece_bytes: int) -> None:
    got_codec, frames = codecs.encode(
        memoryview(data), itemsize, base, piece_bytes=piece_bytes, candidates=(codec,)
    )
    assert got_codec is codec
    decoded = codecs.decode(
        codec, [memoryview(f) for f in frames], len(data), itemsize, base, piece_bytes=piece_bytes
    )
    assert decoded == data


@settings(max_examples=150, deadline=None)
@given(tensors(with_base=False), st.sampled_from([Codec.RAW, Codec.PLANES]))
def test_full_codecs_roundtrip(t, codec):
    _, itemsize, data, _, piece_bytes = t
    roundtrip(codec, itemsize, data, None, piece_bytes)


@settings(max_examples=200, deadline=None)
@given(tensors(), st.sampled_from([Codec.XOR, Codec.SUB]))
def test_delta_codecs_roundtrip(t, codec):
    _, itemsize, data, base, piece_bytes = t
    roundtrip(codec, itemsize, data, base, piece_bytes)


@settings(max_examples=100, deadline=None)
@given(tensors())
def test_best_choice_roundtrips_and_is_smallest(t):
    _, itemsize, data, base, piece_bytes = t
    codec, frames = codecs.encode(memoryview(data), itemsize, base, piece_bytes=piece_bytes)
    views = [memoryview(f) for f in frames]
    assert codecs.decode(codec, views, len(data), itemsize, base, piece_bytes=piece_bytes) == data
    stored = sum(map(len, frames)) + (0 if codec is Codec.RAW else 4 * len(frames))
    assert stored <= len(data)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_sub_wraps_extreme_differences(itemsize):
    uint = DTYPES[{1: "U8", 2: "U16", 4: "U32", 8: "U64"}[itemsize]].uint
    top = np.iinfo(uint).max
    new = np.array([0, top, top // 2, top // 2 + 1, 0, 1], dtype=uint)
    base = np.array([top, 0, top // 2 + 1, top // 2, 0, 0], dtype=uint)
    roundtrip(Codec.SUB, itemsize, new.tobytes(), base.tobytes(), itemsize * 4)


def test_finetune_like_data_prefers_a_delta():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(50_000).astype(np.float32)
    new = base + rng.normal(0, 2e-5, base.shape).astype(np.float32)
    codec, frames = codecs.encode(memoryview(new.tobytes()), 4, base.tobytes())
    assert codec in (Codec.XOR, Codec.SUB)
    assert sum(map(len, frames)) < 0.6 * new.nbytes


def test_frame_without_content_size_is_refused():
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 16)
    with pytest.raises(CodecError, match="declares"):
        codecs.decode(Codec.PLANES, [memoryview(frame)], 16, 1, None, piece_bytes=16)


def test_frame_with_wrong_content_size_is_refused():
    import zstandard

    frame = zstandard.ZstdCompressor().compress(b"\0" * 17)
    with pytest.raises(CodecError, match="declares 17"):
        codecs.decode(Codec.PLANES, [memoryview(frame)], 16, 1, None, piece_bytes=16)


def test_delta_without_base_is_refused():
    with pytest.raises(ValueError):
        codecs.encode(memoryview(b"ab"), 1, None, candidates=(Codec.XOR,))
    with pytest.raises(CodecError):
        codecs.decode(Codec.SUB, [], 2, 1, None)


# -- choosing the codec on a sample --------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(tensors())
def test_sampled_choice_roundtrips(t):
    """With tiny sampling thresholds, so random small data goes through the sampled path."""
    _, itemsize, data, base, piece_bytes = t
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codecs, "SAMPLE_FROM_BYTES", 128)
        mp.setattr(codecs, "SAMPLE_BLOCK_MIN", 8)
        codec, frames = codecs.encode(memoryview(data), itemsize, base, piece_bytes=piece_bytes)
    views = [memoryview(f) for f in frames]
    assert codecs.decode(codec, views, len(data), itemsize, base, piece_bytes=piece_bytes) == data
    stored = sum(map(len, frames)) + (0 if codec is Codec.RAW else 4 * len(frames))
    assert stored <= len(data)


@pytest.mark.parametrize("nbytes", [0, 8, 1000, codecs.SAMPLE_FROM_BYTES - 8])
def test_small_data_is_not_sampled(nbytes):
    assert codecs.sample_spans(nbytes, 8) == []


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
@pytest.mark.parametrize("nbytes", [codecs.SAMPLE_FROM_BYTES, 600_000, 16 * 2**20 + 24, 10**8])
def test_sample_spans_are_spread_aligned_and_small(itemsize, nbytes):
    nbytes -= nbytes % itemsize
    spans = codecs.sample_spans(nbytes, itemsize)
    assert spans == codecs.sample_spans(nbytes, itemsize)
    assert len(spans) == codecs.SAMPLE_BLOCKS
    assert spans[0][0] == 0 and 0 <= nbytes - spans[-1][1] < itemsize
    sizes = {b - a for a, b in spans}
    assert len(sizes) == 1 and sizes.pop() >= codecs.SAMPLE_BLOCK_MIN - itemsize
    for (a, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert a % itemsize == 0 and b <= c
    total = sum(b - a for a, b in spans)
    assert total <= max(nbytes // codecs.SAMPLE_SHARE, nbytes // 4)


FINETUNE_DTYPES = ["F32", "F64", "F16", "BF16", "F8_E5M2", "I8"]


def finetune_bits(dtype: str, n: int, rows_changed: slice | None, seed: int = 0):
    """Bit patterns of a base and a slightly moved version, as ``dtype``."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(n) * 0.05).astype(np.float32)
    new = base.copy()
    where = slice(None) if rows_changed is None else rows_changed
    new[where] += rng.normal(0, 2e-4, new[where].shape).astype(np.float32)

    def bits(x: np.ndarray) -> bytes:
        if dtype in ("F32", "F64", "F16"):
            return x.astype(
                {"F32": np.float32, "F64": np.float64, "F16": np.float16}[dtype]
            ).tobytes()
        high = (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16
        return (high if dtype == "BF16" else (high >> 8).astype(np.uint8)).tobytes()

    return bits(new), bits(base)


@pytest.mark.parametrize("dtype", FINETUNE_DTYPES)
@pytest.mark.parametrize(
    ("nbytes", "rows_changed"),
    [(600_000, None), (5 * 2**20, None), (5 * 2**20, slice(-3000, None))],
)
def test_sampled_choice_is_near_the_best_and_exact(dtype, nbytes, rows_changed, monkeypatch):
    """Sizes that take the sampled path, one of them over several pieces, one odd length."""
    itemsize = DTYPES[dtype].itemsize
    new, base = finetune_bits(dtype, nbytes // itemsize + 1, rows_changed)
    compressed = []
    encode_piece = codecs._encode_piece

    def counting(cands, values, base_values, size):
        compressed.append(len(cands) * values.nbytes)
        return encode_piece(cands, values, base_values, size)

    monkeypatch.setattr(codecs, "_encode_piece", counting)
    codec, frames = codecs.encode(memoryview(new), itemsize, base)
    monkeypatch.undo()
    views = [memoryview(f) for f in frames]
    assert codecs.decode(codec, views, len(new), itemsize, base) == new
    assert codecs.sample_spans(len(new), itemsize)
    # One full encode plus a sample of 1/16 (or at least 256 KiB) for each of 3 codecs.
    assert sum(compressed) <= len(new) + 3 * max(len(new) // 16, 256 * 1024)

    def stored(c: Codec, fr: list[bytes]) -> int:
        return sum(map(len, fr)) + (0 if c is Codec.RAW else 4 * len(fr))

    best = min(
        stored(*codecs.encode(memoryview(new), itemsize, base, candidates=(c,)))
        for c in (Codec.RAW, Codec.PLANES, Codec.XOR, Codec.SUB)
    )
    assert stored(codec, frames) <= 1.02 * best
