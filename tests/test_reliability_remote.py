"""Hostile path remotes and killed push/clone: nothing unverified kept, no ref moved.

(Tampered objects are covered by tests/test_remote_sync.py; here: objects missing behind a
ref, truncated objects, refs naming objects that do not exist, and kill -9 mid-transfer.)
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from crash_harness import count_events, mvc_subprocess, run_forked
from model_factory import committed_base, fine_tuned, random_weights, snapshot, write_model_folder

from mvc.errors import MvcError
from mvc.remote import add_remote, fetch, open_transport, push
from mvc.repo import Repo

KILL_POINTS = 3


@pytest.fixture
def pushed(tmp_path) -> tuple[Repo, Path]:
    """alice's repository with two commits pushed to a path remote."""
    remote = tmp_path / "remote"
    weights = random_weights(0, rows=128, cols=32)
    repo = committed_base(tmp_path / "alice", weights)
    write_model_folder(repo.root / "model", fine_tuned(weights, 1))
    repo.commit("tune", all=True)
    add_remote(repo, "origin", str(remote))
    push(repo, "origin", "main", quiet=True)
    return repo, remote


def fetch_fails_cleanly(tmp_path: Path, remote: Path) -> None:
    bob = Repo.init(tmp_path / "bob")
    add_remote(bob, "origin", str(remote))
    with pytest.raises(MvcError):
        fetch(bob, "origin", quiet=True)
    assert list(bob.git.refs.keys(base=b"refs/remotes/")) == []
    assert bob.fsck() == []
    bob.close()


def remote_keys(remote: Path, prefix: str) -> list[str]:
    return sorted(open_transport(str(remote)).list(prefix))


@pytest.mark.parametrize("kind", ["mvc/objects/", "objects/"])
def test_missing_objects_behind_a_ref(tmp_path, pushed, kind):
    _, remote = pushed
    (remote / remote_keys(remote, kind)[0]).unlink()
    fetch_fails_cleanly(tmp_path, remote)


@pytest.mark.parametrize("kind", ["mvc/objects/", "objects/"])
def test_truncated_objects(tmp_path, pushed, kind):
    _, remote = pushed
    for key in remote_keys(remote, kind)[:3]:
        path = remote / key
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    fetch_fails_cleanly(tmp_path, remote)


def test_ref_to_a_commit_that_does_not_exist(tmp_path, pushed):
    _, remote = pushed
    (remote / "refs" / "heads" / "main").write_text("1" * 40 + "\n")
    fetch_fails_cleanly(tmp_path, remote)


def test_ref_that_is_not_a_commit_id(tmp_path, pushed):
    _, remote = pushed
    (remote / "refs" / "heads" / "main").write_text("../../etc/passwd\n")
    fetch_fails_cleanly(tmp_path, remote)


def _kill_and_rerun(site: Path, args: list[str], scratch: Path, seed: int, check) -> int:
    """Kill `mvc ARGS` at seeded write points in copies of `site`; each re-run must finish.

    `check(victim_site)` then inspects the copy.
    """
    events = count_events(copy(site, scratch / "count"), args)
    kills = 0
    for point in sorted(random.Random(seed).sample(range(1, events + 1), KILL_POINTS)):
        victim = copy(site, scratch / "victim")
        kills += run_forked(victim, args, point).killed
        rerun = mvc_subprocess(victim, *args)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, (
            f"mvc {' '.join(args)} re-run after a kill at write {point}: {out}{err}"
        )
        check(victim)
    return kills


def copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_killed_push_then_rerun(tmp_path, pushed):
    repo, remote = pushed
    write_model_folder(repo.root / "model", fine_tuned(random_weights(0, rows=128, cols=32), 2))
    repo.commit("second tune", all=True)
    head, expected = repo.head(), snapshot(repo.root)
    repo.close()
    # One folder holds the repository and its remote (by a relative URL), so that each
    # copy pushes into its own remote.
    site = tmp_path / "site"
    site.mkdir()
    shutil.move(repo.root, site / "alice")
    shutil.move(remote, site / "remote")
    with Repo.open(site / "alice") as moved:
        config = moved.git.get_config()
        config.set((b"remote", b"origin"), b"url", b"../remote")
        config.write_to_path()

    def check(victim: Path) -> None:
        transport = open_transport(str(victim / "remote"))
        assert transport.get("refs/heads/main").decode().strip() == head
        clone_dir = victim / "bob"
        assert run_forked(victim, ["clone", "remote", "bob"], None).exit_code == 0
        with Repo.open(clone_dir) as cloned:
            assert cloned.fsck() == []
        assert snapshot(clone_dir) == expected

    args = ["-C", "alice", "push", "-q", "origin", "main"]
    assert _kill_and_rerun(site, args, tmp_path, 5, check) >= 1


def test_killed_clone_then_rerun(tmp_path, pushed):
    repo, remote = pushed
    expected = snapshot(repo.root)
    site = tmp_path / "site"
    site.mkdir()

    def check(victim: Path) -> None:
        with Repo.open(victim / "bob") as cloned:
            assert cloned.fsck() == []
            assert cloned.log()[0].message == "tune"
        assert snapshot(victim / "bob") == expected

    assert _kill_and_rerun(site, ["clone", str(remote), "bob"], tmp_path, 6, check) >= 1
