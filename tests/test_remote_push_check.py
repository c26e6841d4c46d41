"""Push sends stored objects as they are: a checksum catches a damaged local copy, and
--paranoid also catches a well-formed file that is not the object its name says."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from model_factory import fine_tuned, random_weights, write_model_folder

from mvc.cli.main import cli
from mvc.errors import CorruptObjectError
from mvc.remote import add_remote, clone, push
from mvc.repo import Repo


@pytest.fixture
def repo(tmp_path) -> Repo:
    repo = Repo.init(tmp_path / "repo")
    write_model_folder(repo.root / "model", random_weights(0))
    repo.add([repo.root / "model"])
    repo.commit("base")
    add_remote(repo, "origin", str(tmp_path / "remote"))
    return repo


def _objects(repo: Repo) -> list[str]:
    return sorted(repo.store.ids())


def test_flipped_byte_is_refused_without_decoding(repo, tmp_path):
    oid = _objects(repo)[0]
    path = repo.store.path(oid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError, match=oid):
        push(repo, "origin", "main")
    assert not (tmp_path / "remote" / "refs" / "heads" / "main").exists()


def test_swapped_object_needs_paranoid(repo, tmp_path):
    first, second = _objects(repo)[:2]
    target = repo.store.path(first)
    target.chmod(0o644)
    target.write_bytes(repo.store.read_raw(second))  # intact file, wrong content for its id
    result = CliRunner().invoke(cli, ["-C", str(repo.root), "push", "--paranoid", "origin"])
    assert result.exit_code == 1 and first in result.output.splitlines()[0]
    assert not (tmp_path / "remote" / "refs" / "heads" / "main").exists()
    # Without --paranoid the intact file is trusted (receivers verify it and refuse it).
    assert push(repo, "origin", "main").refs
    sent = tmp_path / "remote" / "mvc" / "objects" / first[:2] / first[2:]
    assert sent.read_bytes() == repo.store.read_raw(second)


def test_a_delta_base_the_remote_lost_is_sent_again(repo, tmp_path):
    """The bases of what a push sends travel with it when the remote lacks them, even if
    no commit of the push references them (found as the deltas are read for sending)."""
    push(repo, "origin", "main")
    base_ids = set(_objects(repo))
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0), seed=1))
    repo.commit("tuned", all=True)
    deltas = {oid: repo.store.info(oid).base for oid in set(_objects(repo)) - base_ids}
    lost = sorted(b for b in deltas.values() if b is not None)
    assert lost
    for oid in lost:  # as if the remote had lost them
        (tmp_path / "remote" / "mvc" / "objects" / oid[:2] / oid[2:]).unlink()
    report = push(repo, "origin", "main")
    assert report.tensor_objects == len(deltas) + len(lost)
    bob = clone(str(tmp_path / "remote"), str(tmp_path / "bob"), full=True).repo
    assert bob.fsck() == [] and all(bob.store.has(oid) for oid in lost)
