"""ObjectStore: round trips, verification on every read, delta chains, gc, write_raw."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvc.errors import CorruptObjectError, FormatError, NotFoundError
from mvc.formats.dtypes import DTYPES
from mvc.store import MAX_DELTA_DEPTH, ObjectStore, PutRequest, object_id

DTYPE_NAMES = sorted(DTYPES)


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(tmp_path / "mvc")
    yield s
    s.close()


def finetune_pair(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n).astype(np.float32)
    return base, base + rng.normal(0, 2e-5, n).astype(np.float32)


@st.composite
def shaped(draw):
    name = draw(st.sampled_from(DTYPE_NAMES))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    n = int(np.prod(shape, dtype=np.int64)) * DTYPES[name].itemsize
    data = draw(st.binary(min_size=n, max_size=n))
    other = draw(st.binary(min_size=n, max_size=n))
    return name, shape, data, other


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shaped())
def test_put_get_roundtrip_every_dtype(store, t):
    name, shape, data, other = t
    base = store.put(other, name, shape)
    for b in (None, base):
        oid = store.put(data, name, shape, base=b)
        assert oid == object_id(name, shape, data)
        assert store.get(oid) == data
        info = store.info(oid)
        assert (info.dtype, info.shape, info.raw_size) == (name, shape, len(data))
        store.verify(oid)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(1, 4000), st.floats(1e-7, 1e-4), st.integers(0, 2**32 - 1))
def test_finetune_deltas_win_and_roundtrip(store, n, scale, seed):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n).astype(np.float32)
    new = base + rng.normal(0, scale, n).astype(np.float32)
    b = store.put(base.tobytes(), "F32", (n,))
    oid = store.put(new.tobytes(), "F32", (n,), base=b)
    assert store.get(oid) == new.tobytes()
    if n >= 1000 and oid != b:
        info = store.info(oid)
        assert info.codec in ("xor", "sub") and info.base == b and info.depth == 1
        assert info.stored_size < store.stored_size(b)


def test_put_existing_is_a_noop(store):
    base, _ = finetune_pair(1000)
    oid = store.put(base.tobytes(), "F32", base.shape)
    path = store.path(oid)
    mtime = path.stat().st_mtime_ns
    assert store.put(base.tobytes(), "F32", base.shape) == oid
    assert path.stat().st_mtime_ns == mtime


def test_put_rejects_bad_input(store):
    with pytest.raises(ValueError):
        store.put(b"abc", "F32", (1,))
    with pytest.raises(FormatError):
        store.put(b"abcd", "F99", (1,))


def test_unusable_bases_give_full_objects(store):
    base, new = finetune_pair(1000)
    other_shape = store.put(base.tobytes(), "F32", (10, 100))
    other_dtype = store.put(base.tobytes(), "I32", base.shape)
    for b in (other_shape, other_dtype, "0" * 32):
        oid = store.put(new.tobytes(), "F32", base.shape, base=b)
        assert store.info(oid).base is None
        assert store.get(oid) == new.tobytes()
        os.unlink(store.path(oid))


def test_damaged_base_gives_a_full_object(store):
    base, new = finetune_pair(1000)
    b = store.put(base.tobytes(), "F32", base.shape)
    damaged = bytearray(store.read_raw(b))
    damaged[-20] ^= 1
    store.path(b).write_bytes(damaged)
    oid = store.put(new.tobytes(), "F32", new.shape, base=b)
    assert store.info(oid).base is None
    assert store.get(oid) == new.tobytes()


def test_missing_object(store):
    with pytest.raises(NotFoundError):
        store.get("0" * 32)
    with pytest.raises(NotFoundError):
        store.info("0" * 32)
    assert not store.has("0" * 32)


def test_delta_chain_depth_is_bounded(store):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    versions, oids, prev = [], [], None
    for _ in range(2 * MAX_DELTA_DEPTH + 3):
        x = x + rng.normal(0, 1e-5, x.shape).astype(np.float32)
        prev = store.put(x.tobytes(), "F32", x.shape, base=prev)
        versions.append(x.tobytes())
        oids.append(prev)
    depths = [store.info(o).depth for o in oids]
    assert max(depths) == MAX_DELTA_DEPTH
    assert depths[: MAX_DELTA_DEPTH + 2] == [0, *range(1, MAX_DELTA_DEPTH + 1), 0]
    for oid, data in zip(oids, versions, strict=True):
        assert store.get(oid) == data


def flip_each_byte(path, check):
    """Flip every byte of ``path`` in turn, call ``check`` each time, restore it."""
    original = path.read_bytes()
    try:
        for i in range(len(original)):
            damaged = bytearray(original)
            damaged[i] ^= 0x40
            path.write_bytes(damaged)
            check(i)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("kind", ["planes", "delta", "raw"])
def test_any_flipped_byte_is_detected(store, kind):
    base, new = finetune_pair(300)
    b = store.put(base.tobytes(), "F32", base.shape)
    if kind == "planes":
        oid = b
    elif kind == "delta":
        oid = store.put(new.tobytes(), "F32", new.shape, base=b)
    else:
        oid = store.put(np.arange(3, dtype=np.int64).tobytes(), "I64", (3,))
    info = store.info(oid)
    assert info.base == b if kind == "delta" else info.codec == kind

    def check(i):
        for op in (store.get, store.verify):
            with pytest.raises(CorruptObjectError, match=oid):
                op(oid)

    flip_each_byte(store.path(oid), check)
    store.verify(oid)


def test_corrupt_base_is_named_when_reading_a_delta(store):
    base, new = finetune_pair(300)
    b = store.put(base.tobytes(), "F32", base.shape)
    oid = store.put(new.tobytes(), "F32", new.shape, base=b)

    def check(i):
        with pytest.raises(CorruptObjectError, match=b):
            store.get(oid)

    flip_each_byte(store.path(b), check)
    os.unlink(store.path(b))
    with pytest.raises(CorruptObjectError, match=f"{oid}.*base {b} is missing"):
        store.get(oid)


def test_content_not_matching_id_is_detected(store):
    data = np.arange(100, dtype=np.float32).tobytes()
    oid = store.put(data, "F32", (100,))
    wrong = "f" * 32
    # write_raw would refuse this, so copy the file behind the store's back
    store.path(wrong).parent.mkdir(parents=True, exist_ok=True)
    store.path(wrong).write_bytes(store.read_raw(oid))
    with pytest.raises(CorruptObjectError, match=f"{wrong}.*does not match its id"):
        store.get(wrong)


def test_write_raw_verifies_and_needs_bases_first(tmp_path):
    src, dst = ObjectStore(tmp_path / "src"), ObjectStore(tmp_path / "dst")
    base, new = finetune_pair(2000)
    b = src.put(base.tobytes(), "F32", base.shape)
    oid = src.put(new.tobytes(), "F32", new.shape, base=b)
    with pytest.raises(CorruptObjectError, match="missing"):
        dst.write_raw(oid, src.read_raw(oid))
    assert not dst.has(oid)
    with pytest.raises(CorruptObjectError, match=b):
        dst.write_raw(b, src.read_raw(b)[:-1])
    with pytest.raises(CorruptObjectError, match=oid):
        dst.write_raw(oid, src.read_raw(b))  # valid object, wrong id
    dst.write_raw(b, src.read_raw(b))
    dst.write_raw(oid, src.read_raw(oid))
    assert dst.get(oid) == new.tobytes()
    assert dst.read_raw(oid) == src.read_raw(oid)
    assert sorted(dst.ids()) == sorted([b, oid])


def test_gc_keeps_live_objects_and_their_bases(store):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(3000).astype(np.float32)
    chain, prev = [], None
    for _ in range(4):
        x = x + rng.normal(0, 1e-5, x.shape).astype(np.float32)
        prev = store.put(x.tobytes(), "F32", x.shape, base=prev)
        chain.append(prev)
    loose = store.put(b"\x01\x02", "U8", (2,))
    sizes = {o: store.stored_size(o) for o in [*chain, loose]}
    stale = store.path(loose).parent / ".tmp-stale"
    fresh = store.path(loose).parent / ".tmp-fresh"
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    report = store.gc({chain[2]})
    assert set(store.ids()) == set(chain[:3])
    assert (report.kept, report.deleted) == (3, 2)
    assert report.freed_bytes == sizes[chain[3]] + sizes[loose] + 10
    assert not stale.exists() and fresh.exists()
    assert store.get(chain[2]) == store.get(chain[2])


def test_ids_lists_only_objects(store):
    oid = store.put(b"\x00" * 8, "U8", (8,))
    (store.objects / "ab").mkdir()
    (store.objects / "ab" / ".tmp-x").write_bytes(b"")
    (store.objects / "README").write_text("not an object")
    assert list(store.ids()) == [oid]


def test_put_many_matches_put_and_keeps_order(store, tmp_path):
    base, new = finetune_pair(5000)
    b = store.put(base.tobytes(), "F32", base.shape)
    reqs = [
        PutRequest(new.tobytes(), "F32", new.shape, b),
        (b"\x00" * 4, "U8", (4,)),
        PutRequest(new.tobytes(), "F32", new.shape, b),
        (np.zeros((0, 3), np.float32).tobytes(), "F32", (0, 3)),
    ]
    ids = store.put_many(reqs, workers=2)
    assert ids[0] == ids[2] == object_id("F32", new.shape, new.tobytes())
    other = ObjectStore(tmp_path / "other")
    assert [other.put(r[0], r[1], r[2]) for r in reqs] == ids
    assert store.info(ids[0]).base == b
    for oid, r in zip(ids, reqs, strict=True):
        assert store.get(oid) == bytes(r[0])
