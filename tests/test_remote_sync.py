"""push / fetch / clone / pull against a path remote and a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_factory import committed_base, fine_tuned, random_weights, snapshot, write_model_folder

from mvc.errors import ConflictError, CorruptObjectError, MvcError, NotFoundError
from mvc.remote import (
    RefConflict,
    add_remote,
    clone,
    fetch,
    list_remotes,
    open_transport,
    pull,
    push,
    remove_remote,
)
from mvc.remote import sync as sync_module
from mvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]
TUNED = ("layer.0.weight",)


@pytest.fixture(params=["path", pytest.param("s3", marks=pytest.mark.s3)])
def remote_url(request, tmp_path, monkeypatch):
    """An empty remote of each kind (S3: a fresh bucket on the session's server)."""
    if request.param == "path":
        return str(tmp_path / "remote")
    server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{server.new_bucket()}/team/llama-ft"


@pytest.fixture
def origin(tmp_path, remote_url):
    """A repository with a committed base model and `origin` pointing at the remote."""
    repo = committed_base(tmp_path / "alice")
    add_remote(repo, "origin", remote_url)
    return repo


def fine_tune(repo: Repo, seed: int, message: str) -> str:
    weights = fine_tuned(random_weights(0), seed=seed, only=TUNED)
    write_model_folder(repo.root / "model", weights)
    return repo.commit(message, all=True)


def test_push_clone_is_byte_identical_and_second_push_sends_nothing(origin, tmp_path):
    first = push(origin, "origin", "main")
    assert first.git_objects > 0 and first.tensor_objects == 5 and first.bytes > 0
    assert first.refs == {"refs/heads/main": (None, origin.head())}

    again = push(origin, "origin", "main")
    assert (again.git_objects, again.tensor_objects, again.bytes, again.refs) == (0, 0, 0, {})

    result = clone(
        origin.git.get_config().get((b"remote", b"origin"), b"url").decode(), str(tmp_path / "bob")
    )
    assert result.branch == "main" and not result.resumed
    assert snapshot(result.repo.root) == snapshot(origin.root)
    assert result.repo.head() == origin.head()
    assert result.repo.fsck() == []
    assert result.repo.status().clean


def test_fine_tune_push_sends_only_its_delta(origin, tmp_path, remote_url):
    base = push(origin, "origin", "main")
    origin.switch("math", create=True)
    fine_tune(origin, 1, "math SFT")
    report = push(origin, "origin", "math")
    assert report.tensor_objects == 1  # only the tuned tensor; the rest are already there
    assert report.git_objects == 4  # commit, root tree, model/ tree, one manifest
    assert report.bytes < base.bytes
    info = origin.store.info(
        next(
            iter(
                origin.manifest("math", "model/model.safetensors")
                .by_name()["layer.0.weight"]
                .chunk_ids
            )
        )
    )
    assert info.base is not None  # a delta object travelled, not a full copy

    bob = clone(remote_url, str(tmp_path / "bob")).repo
    bob.switch("math")  # creates the tracking branch from origin/math
    assert snapshot(bob.root) == snapshot(origin.root)
    assert bob.fsck() == []


def test_fetch_and_pull_fast_forward(origin, tmp_path, remote_url):
    push(origin, "origin", "main")
    bob = clone(remote_url, str(tmp_path / "bob")).repo
    new = fine_tune(origin, 2, "more training")
    push(origin)
    report = fetch(bob, "origin")
    assert report.refs == {"refs/remotes/origin/main": (bob.head(), new)}
    result = pull(bob)
    assert (result.outcome, result.commit) == ("fast-forward", new)
    assert snapshot(bob.root) == snapshot(origin.root)
    assert pull(bob).outcome == "up-to-date"


def test_diverged_push_is_refused_and_pull_says_merge(origin, tmp_path, remote_url):
    push(origin, "origin", "main")
    bob = clone(remote_url, str(tmp_path / "bob")).repo
    fine_tune(origin, 3, "alice")
    push(origin)
    fine_tune(bob, 4, "bob")
    with pytest.raises(RefConflict, match="fetch and merge first"):
        push(bob)
    with pytest.raises(ConflictError, match="diverged"):
        pull(bob, ff_only=True)
    forced = push(bob, force=True)
    assert forced.refs["refs/heads/main"][1] == bob.head()


_PUSH_SCRIPT = """
import sys
from mvc.remote import RefConflict, push
from mvc.repo import Repo
repo = Repo.open(sys.argv[1])
sys.stdin.readline()
try:
    push(repo, "origin", "main", quiet=True)
    print("won")
except RefConflict as err:
    print("lost:", err.message)
"""


def test_concurrent_pushes_one_wins_nothing_lost(origin, tmp_path, remote_url):
    push(origin, "origin", "main")
    clones = [clone(remote_url, str(tmp_path / name)).repo for name in ("bob", "carol")]
    heads = [fine_tune(repo, 10 + i, f"work {i}") for i, repo in enumerate(clones)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUSH_SCRIPT, str(repo.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for repo in clones
    ]
    outputs = [p.communicate("go\n", timeout=120)[0].strip() for p in procs]
    assert sorted(o.split(":")[0] for o in outputs) == ["lost", "won"]
    assert any("fetch and merge first" in o for o in outputs)
    winner = heads[[o.startswith("won") for o in outputs].index(True)]
    assert open_transport(remote_url).read_ref("refs/heads/main")[0] == f"{winner}\n".encode()
    fresh = clone(remote_url, str(tmp_path / "dave")).repo
    assert fresh.head() == winner and fresh.fsck() == []


class _Interrupted(Exception):
    pass


def _failing_after(monkeypatch, method: str, count: int, prefix: str) -> None:
    """Make the transports that sync opens fail after `count` calls of `method` on `prefix`."""
    real_open = sync_module.open_transport
    calls = {"n": 0}

    def opener(url, endpoint=None):
        transport = real_open(url, endpoint)
        original = getattr(transport, method)

        def wrapped(key, *args):
            if key.startswith(prefix):
                calls["n"] += 1
                if calls["n"] > count:
                    raise _Interrupted(key)
            return original(key, *args)

        setattr(transport, method, wrapped)
        return transport

    monkeypatch.setattr(sync_module, "open_transport", opener)


def test_interrupted_push_resumes_without_resending(origin, tmp_path, remote_url, monkeypatch):
    with monkeypatch.context() as patch:
        _failing_after(patch, "put", 3, "mvc/objects/")
        with pytest.raises(_Interrupted):
            push(origin, "origin", "main")
    assert open_transport(remote_url).read_ref("refs/heads/main") == (None, None)
    report = push(origin, "origin", "main")
    # Exactly 3 tensor objects got there; git blobs and trees travel alongside tensor
    # objects, so some of those may have too (skipped counts both kinds).
    assert report.tensor_objects == 5 - 3
    assert report.skipped >= 3
    bob = clone(remote_url, str(tmp_path / "bob")).repo
    assert snapshot(bob.root) == snapshot(origin.root) and bob.fsck() == []


def test_interrupted_clone_resumes(origin, tmp_path, remote_url, monkeypatch):
    origin.switch("math", create=True)
    fine_tune(origin, 1, "math SFT")
    push(origin, "origin", "main")
    push(origin, "origin", "math")
    with monkeypatch.context() as patch:
        _failing_after(patch, "get", 3, "mvc/objects/")
        with pytest.raises(_Interrupted):
            clone(remote_url, str(tmp_path / "bob"))
    result = clone(remote_url, str(tmp_path / "bob"))
    assert result.resumed
    assert result.report.tensor_objects <= 6 - 3
    result.repo.switch("math")
    assert snapshot(result.repo.root) == snapshot(origin.root) and result.repo.fsck() == []


def _tamper(remote_url: str, key: str) -> None:
    transport = open_transport(remote_url)
    data = bytearray(transport.get(key))
    data[len(data) // 2] ^= 0x01
    if remote_url.startswith("s3://"):
        transport._client.put_object(
            Bucket=transport.bucket, Key=transport._key(key), Body=bytes(data)
        )
    else:
        Path(remote_url, key).write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["mvc/objects/", "objects/"])
def test_tampered_object_rejected_before_refs_move(origin, tmp_path, remote_url, kind):
    push(origin, "origin", "main")
    key = next(k for k in open_transport(remote_url).list(kind))
    _tamper(remote_url, key)
    bob = Repo.init(tmp_path / "bob")
    add_remote(bob, "origin", remote_url)
    with pytest.raises(CorruptObjectError, match="does not verify"):
        fetch(bob, "origin")
    assert list(bob.git.refs.keys(base=b"refs/remotes/")) == []


def test_remote_config_round_trip(tmp_path):
    repo = Repo.init(tmp_path / "r")
    add_remote(repo, "origin", "s3://team/llama-ft", endpoint="http://127.0.0.1:9000")
    add_remote(repo, "shared", str(tmp_path / "shared"))
    assert [(r.name, r.url, r.endpoint) for r in list_remotes(repo)] == [
        ("origin", "s3://team/llama-ft", "http://127.0.0.1:9000"),
        ("shared", str(tmp_path / "shared"), None),
    ]
    with pytest.raises(MvcError, match="already exists"):
        add_remote(repo, "origin", "/elsewhere")
    with pytest.raises(MvcError, match="unsupported"):
        add_remote(repo, "web", "http://example.com/x")
    remove_remote(repo, "origin")
    assert [r.name for r in list_remotes(repo)] == ["shared"]
    with pytest.raises(NotFoundError):
        remove_remote(repo, "origin")


def test_clone_of_missing_remote_fails_cleanly(tmp_path):
    with pytest.raises(NotFoundError, match="no branches"):
        clone(str(tmp_path / "nothing-here"), str(tmp_path / "copy"))
    assert not (tmp_path / "copy").exists()


def test_cli_push_clone(origin, tmp_path, remote_url, monkeypatch):
    from click.testing import CliRunner

    from mvc.cli.main import cli

    runner = CliRunner()
    monkeypatch.chdir(origin.root)
    result = runner.invoke(cli, ["push", "origin", "main", "--json"])
    assert result.exit_code == 0, result.output
    assert '"tensor_objects": 5' in result.output
    result = runner.invoke(cli, ["push", "-q"])
    assert result.exit_code == 0 and result.output == ""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["clone", remote_url, "bob"])
    assert result.exit_code == 0, result.output
    assert "checked out 'main'" in result.output
    assert snapshot(tmp_path / "bob") == snapshot(origin.root)
    result = runner.invoke(cli, ["push", "nowhere"])
    assert result.exit_code == 1
