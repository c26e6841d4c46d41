"""A full disk and a read-only store: one clean error line, and the repository intact.

Real small tmpfs mounts when we may mount (root, as in CI containers); an injected ENOSPC
at every write of a commit otherwise (and always, for the exhaustive part).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from model_factory import committed_base, random_weights, snapshot, write_model_folder

from mvc.errors import MvcError
from mvc.repo import Repo


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs (skipped where mounting is not allowed)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def one_clean_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("mvc: error: ")
    return first


def test_disk_full_then_read_only(tiny_fs, run_mvc):
    def mvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
        return run_mvc(cwd, *args, check=False, timeout=300)

    root = tiny_fs / "repo"
    Repo.init(root).close()
    write_model_folder(root / "model", random_weights(0, rows=256, cols=64))
    assert mvc(root, "add", "model").returncode == 0
    assert mvc(root, "commit", "-m", "base").returncode == 0
    base = snapshot(root)
    # ~1.3 MB of incompressible weights: the file fits, its objects do not.
    write_model_folder(root / "model", random_weights(1, rows=5200, cols=64))
    line = one_clean_error(mvc(root, "commit", "-am", "too big"))
    assert "No space left on device" in line
    with Repo.open(root) as repo:
        assert repo.log()[0].message == "base"
        assert not (repo.mvc_dir / "lock").exists()
        shutil.rmtree(root / "model")  # free the space the work tree used
        assert repo.fsck() == []
        repo.checkout("main", force=True)
    assert snapshot(root) == base

    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    write_fails = mvc(root, "switch", "-c", "other")
    assert "Read-only file system" in one_clean_error(write_fails)
    assert mvc(root, "log", "--oneline").returncode == 0  # reading still works
    fsck = mvc(root, "fsck")
    assert fsck.returncode == 0, fsck.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    assert snapshot(root) == base


def test_enospc_at_every_write_of_a_commit(tmp_path, monkeypatch):
    """Inject ENOSPC at the Nth fsync of `commit -a` (where a full disk surfaces for
    buffered writes), for every N."""
    weights = random_weights(0, rows=64, cols=16)
    repo = committed_base(tmp_path / "repo", weights)
    base_sha = repo.head()
    base = snapshot(repo.root)
    write_model_folder(repo.root / "model", random_weights(5, rows=64, cols=16))
    changed = snapshot(repo.root)
    repo.close()

    real_fsync = os.fsync
    failures = 0
    for n in range(1, 200):
        calls = [0]

        def fsync(fd, n=n, calls=calls):  # every durable write ends in an fsync
            calls[0] += 1
            if calls[0] == n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        with Repo.open(tmp_path / "repo") as repo:
            monkeypatch.setattr(os, "fsync", fsync)
            try:
                repo.commit("fine-tune", all=True)
            except MvcError as err:
                assert "No space left on device" in err.message
                failures += 1
            else:
                break
            finally:
                monkeypatch.setattr(os, "fsync", real_fsync)
            assert repo.head() == base_sha
            assert repo.fsck() == []
            assert not (repo.mvc_dir / "lock").exists()
    else:
        pytest.fail("commit never succeeded")
    assert failures >= 3
    with Repo.open(tmp_path / "repo") as repo:
        assert repo.log()[0].message == "fine-tune"
        assert snapshot(repo.root) == changed
        repo.checkout(base_sha, force=True)
        assert snapshot(repo.root) == base
        assert repo.fsck() == []
