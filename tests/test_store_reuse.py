"""Reusing bytes the caller already has: ``get(known=...)`` and ``put(base_data=...)``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mvc.errors import CorruptObjectError
from mvc.store import ObjectStore, PutRequest


@pytest.fixture
def store(tmp_path):
    s = ObjectStore(tmp_path / "mvc")
    yield s
    s.close()


def versions(count: int, n: int = 5000, seed: int = 0) -> list[bytes]:
    """``count`` successive fine-tune-like versions of one fp32 vector."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    out = []
    for _ in range(count):
        out.append(x.tobytes())
        x = x + rng.normal(0, 2e-5, n).astype(np.float32)
    return out


def chain(store: ObjectStore, datas: list[bytes]) -> list[str]:
    oids: list[str] = []
    for data in datas:
        oids.append(store.put(data, "F32", (len(data) // 4,), base=oids[-1] if oids else None))
    return oids


def hide(store: ObjectStore, oid: str) -> None:
    """Move ``oid``'s file away, so any read of it fails."""
    path = store.path(oid)
    os.rename(path, path.with_name(path.name + ".hidden"))


def test_known_base_is_not_read(store):
    base, new = versions(2)
    b, oid = chain(store, [base, new])
    assert store.info(oid).base == b
    base_bytes = store.get(b)
    hide(store, b)
    assert store.get(oid, known={b: base_bytes}) == new
    assert store.get(oid, known={b: memoryview(base_bytes)}) == new
    with pytest.raises(CorruptObjectError, match=f"{oid}.*base {b} is missing"):
        store.get(oid)


def test_known_stops_the_walk_midway(store):
    datas = versions(4)
    oids = chain(store, datas)
    assert [store.info(o).depth for o in oids] == [0, 1, 2, 3]
    middle = store.get(oids[1])
    hide(store, oids[0])
    assert store.get(oids[3], known={oids[1]: middle}) == datas[3]
    # A typed view of the same bytes works too.
    as_floats = memoryview(np.frombuffer(middle, np.float32))
    assert store.get(oids[2], known={oids[1]: as_floats}) == datas[2]


def test_known_object_itself_is_returned(store):
    (data,) = versions(1)
    (oid,) = chain(store, [data])
    hide(store, oid)
    got = store.get(oid, known={oid: memoryview(data)})
    assert got == data and isinstance(got, bytes)


def test_unrelated_known_changes_nothing(store):
    base, new, other = versions(3)
    b, oid = chain(store, [base, new])
    assert store.get(oid, known={"0" * 32: other}) == new


def test_wrong_known_bytes_are_caught(store):
    base, new = versions(2)
    b, oid = chain(store, [base, new])
    with pytest.raises(ValueError, match=f"known bytes of {b}"):
        store.get(oid, known={b: base[:-4]})
    wrong = bytearray(base)
    wrong[0] ^= 1
    with pytest.raises(CorruptObjectError, match=f"{oid}.*does not match its id"):
        store.get(oid, known={b: bytes(wrong)})


def test_damaged_delta_is_caught_with_a_known_base(store):
    base, new = versions(2)
    b, oid = chain(store, [base, new])
    path = store.path(oid)
    damaged = bytearray(path.read_bytes())
    damaged[-20] ^= 1
    path.write_bytes(damaged)
    with pytest.raises(CorruptObjectError, match=oid):
        store.get(oid, known={b: base})


def test_put_with_base_data_does_not_decode_the_base(store, tmp_path, monkeypatch):
    base, new = versions(2)
    (b,) = chain(store, [base])

    def no_get(*args, **kwargs):
        raise AssertionError("the base was decoded again")

    monkeypatch.setattr(store, "get", no_get)
    oid = store.put(new, "F32", (len(new) // 4,), base=b, base_data=base)
    monkeypatch.undo()
    info = store.info(oid)
    assert (info.base, info.depth) == (b, 1)
    assert store.get(oid) == new
    # The same file as a put that decodes the base itself.
    plain = ObjectStore(tmp_path / "plain")
    chain(plain, [base, new])
    assert plain.read_raw(oid) == store.read_raw(oid)


def test_wrong_base_data_is_refused(store):
    base, new, other = versions(3)
    (b,) = chain(store, [base])
    with pytest.raises(ValueError, match=f"not the content of object {b}"):
        store.put(new, "F32", (len(new) // 4,), base=b, base_data=other)
    assert list(store.ids()) == [b]


def test_base_data_of_an_unusable_base_is_ignored(store):
    base, new = versions(2)
    other_shape = store.put(base, "F32", (10, len(base) // 40))
    for b in (other_shape, "0" * 32, None):
        oid = store.put(new, "F32", (len(new) // 4,), base=b, base_data=base)
        assert store.info(oid).base is None
        assert store.get(oid) == new
        os.unlink(store.path(oid))


def test_put_many_uses_base_data(store, monkeypatch):
    base, new, newer = versions(3)
    (b,) = chain(store, [base])
    shape = (len(new) // 4,)
    monkeypatch.setattr(store, "get", lambda *a, **k: pytest.fail("the base was decoded again"))
    ids = store.put_many(
        [PutRequest(new, "F32", shape, b, base), (newer, "F32", shape, b, memoryview(base))]
    )
    monkeypatch.undo()
    for oid, data in zip(ids, [new, newer], strict=True):
        assert store.info(oid).base == b
        assert store.get(oid) == data
