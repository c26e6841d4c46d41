"""MergeLock key files: generation, parsing, fingerprints."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvc.errors import MvcError
from mvc.lock.keys import KEY_BYTES, derive, key_id, keygen, load_key


def test_keygen_writes_a_private_hex_key_and_never_overwrites(tmp_path):
    path = tmp_path / "team.key"
    keygen(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert len(key) == KEY_BYTES
    assert path.read_text() == key.hex() + "\n"
    with pytest.raises(MvcError, match="already exists"):
        keygen(path)
    assert load_key(path) == key
    keygen(tmp_path / "other.key")
    assert load_key(tmp_path / "other.key") != key


@given(st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES), st.sampled_from(["", "\n", "  \n"]))
def test_load_key_accepts_raw_and_hex(tmp_path_factory, key, trailer):
    folder = tmp_path_factory.mktemp("keys")
    (folder / "raw").write_bytes(key)
    (folder / "hex").write_text(key.hex() + trailer)
    (folder / "HEX").write_text(key.hex().upper() + trailer)
    assert load_key(folder / "raw") == load_key(folder / "hex") == load_key(folder / "HEX") == key


@given(st.binary(max_size=80).filter(lambda b: len(b) != KEY_BYTES))
def test_load_key_rejects_anything_else(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("keys") / "bad"
    path.write_bytes(data)
    try:
        is_hex_key = len(bytes.fromhex(data.decode("ascii").strip())) == KEY_BYTES
    except ValueError:
        is_hex_key = False
    if is_hex_key:
        assert len(load_key(path)) == KEY_BYTES
    else:
        with pytest.raises(MvcError, match="not a MergeLock key"):
            load_key(path)


def test_missing_key_file_is_a_user_error(tmp_path):
    with pytest.raises(MvcError, match="cannot read key file"):
        load_key(tmp_path / "absent.key")


def test_derivations_are_separated_by_purpose_and_key():
    key = bytes(range(32))
    assert derive(key, "a") == derive(key, "a")
    assert derive(key, "a") != derive(key, "b")
    assert derive(key, "a") != derive(bytes(32), "a")
    assert key_id(key) != key_id(bytes(32))
    assert key.hex() not in key_id(key)
    with pytest.raises(MvcError):
        derive(b"short", "a")
