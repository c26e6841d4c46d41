"""Object ids: xxh3-128 of dtype, shape and bytes, independent of the codec."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from mvc.errors import NotFoundError
from mvc.store import ObjectStore, object_id
from mvc.store.ids import check_object_id, is_object_id


def test_id_is_xxh3_128_of_prefix_and_bytes():
    data = np.arange(6, dtype=np.float32).tobytes()
    expected = xxhash.xxh3_128(b"F32[2, 3]" + data).hexdigest()
    assert object_id("F32", (2, 3), data) == expected
    assert object_id("F32", [2, 3], memoryview(data)) == expected
    assert len(expected) == 32 and is_object_id(expected)


def test_dtype_and_shape_are_part_of_the_id():
    data = bytes(16)
    ids = {
        object_id("F32", (4,), data),
        object_id("I32", (4,), data),
        object_id("F32", (2, 2), data),
        object_id("U8", (16,), data),
    }
    assert len(ids) == 4
    assert object_id("U8", (), b"\x07") == xxhash.xxh3_128(b"U8[]\x07").hexdigest()


def test_same_content_same_id_whatever_the_codec(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.standard_normal(4096).astype(np.float32)
    new = base + np.float32(1e-6)
    store_full, store_delta = ObjectStore(tmp_path / "a"), ObjectStore(tmp_path / "b")
    b = store_delta.put(base.tobytes(), "F32", base.shape)
    full = store_full.put(new.tobytes(), "F32", new.shape)
    delta = store_delta.put(new.tobytes(), "F32", new.shape, base=b)
    assert full == delta
    assert store_full.info(full).codec != store_delta.info(delta).codec


@pytest.mark.parametrize("bad", ["", "ABCDEF" * 6, "../" + "0" * 29, "0" * 31, 5])
def test_malformed_ids_are_refused(bad, tmp_path):
    assert not is_object_id(bad)
    with pytest.raises(NotFoundError):
        check_object_id(bad)
    assert not ObjectStore(tmp_path).has(bad)
