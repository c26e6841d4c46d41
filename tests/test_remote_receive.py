"""How a fetch receives tensor objects: bases fetched by the worker that needs them (no
delta parked on disk), and remotes whose delta chains loop or never end."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from model_factory import committed_base, fine_tuned, random_weights, snapshot, write_model_folder

from mvc.errors import CorruptObjectError
from mvc.progress import Progress, Tally
from mvc.remote import clone, push
from mvc.remote import receive as receive_module
from mvc.remote.layout import tensor_object_key
from mvc.remote.path import PathTransport
from mvc.remote.receive import receive_tensors
from mvc.repo import Repo
from mvc.store.chunking import PIECE_BYTES
from mvc.store.codec_header import Codec
from mvc.store.objfile import pack_header, trailer


def test_a_lazy_clone_fetches_each_base_with_its_delta_and_parks_nothing(tmp_path, monkeypatch):
    """The checked-out fine-tune's chunks are deltas whose bases it does not reference."""
    origin = committed_base(tmp_path / "alice")
    write_model_folder(origin.root / "model", fine_tuned(random_weights(0), seed=1))
    origin.commit("tuned", all=True)
    remote = str(tmp_path / "remote")
    push(origin, remote, "main")
    deltas = [oid for oid in origin.store.ids() if origin.store.info(oid).base]
    assert deltas

    def no_spill(*args):
        raise AssertionError("a delta was parked on disk")

    monkeypatch.setattr(receive_module, "_write_spill", no_spill)
    bob = clone(remote, str(tmp_path / "bob")).repo
    assert snapshot(bob.root) == snapshot(origin.root) and bob.fsck() == []
    assert all(bob.store.has(oid) for oid in deltas)


def _delta(base: str, depth: int = 1) -> bytes:
    """A well-formed XOR delta object of 16 U8 values on `base` (content never checked:
    the base never arrives)."""
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(16))
    chunks = [pack_header(Codec.XOR, "U8", (16,), 16, depth, base, PIECE_BYTES, [len(frame)])]
    chunks.append(frame)
    return b"".join([*chunks, trailer(chunks)])


@pytest.mark.parametrize(
    ("chain", "reason"),
    [
        ({"a" * 32: "b" * 32, "b" * 32: "a" * 32}, "never arrived"),  # a loop
        ({f"{i:032x}": f"{i + 1:032x}" for i in range(20)}, "too deep"),  # endless
    ],
)
def test_a_remote_whose_delta_chain_does_not_end_is_refused(tmp_path, chain, reason):
    transport = PathTransport(tmp_path / "remote")
    for oid, base in chain.items():
        transport.put(tensor_object_key(oid), _delta(base))
    repo = Repo.init(tmp_path / "bob")
    first = next(iter(chain))
    with ThreadPoolExecutor(4) as pool, pytest.raises(CorruptObjectError, match=reason) as err:
        receive_tensors(repo, transport, [first], pool, Tally(Progress(), "", 1))
    assert "\n" not in str(err.value)
    assert not any(repo.store.has(oid) for oid in chain)
