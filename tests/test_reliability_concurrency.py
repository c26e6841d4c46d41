"""Several mvc processes on one repository: they queue on the lock, nothing is lost.

Processes are forked from pytest (mvc is already imported, so each costs milliseconds) and
run the real CLI entry point; one real subprocess checks the user-visible lock message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from crash_harness import mvc_subprocess, run_forked, start_forked, wait_forked
from model_factory import fine_tuned, random_weights, snapshot, write_model_folder

from mvc.cli.main import cli
from mvc.repo import Repo
from mvc.repo.mutex import repo_lock

ROUNDS = 4
WAIT = {"MVC_LOCK_WAIT": "120"}


def fork_function(fn, *args) -> int:
    """Run `fn(*args)` in a forked child; its return value is the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until _exit
            code = fn(*args)
        finally:
            os._exit(code)
    return pid


def exit_code_of(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child {pid} died of a signal"
    return os.WEXITSTATUS(status)


def mvc_in_child(*args: str) -> int:
    """The CLI in this (child) process: its exit code (1 for a one-line error, 71 for a crash)."""
    try:
        cli.main(args=list(args), prog_name="mvc", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        return 71
    return 0


def versioned(seed: int, value: float) -> dict[str, np.ndarray]:
    weights = random_weights(seed, rows=16, cols=8)
    weights["scale"] = np.array(value, dtype=np.float32)
    return weights


def scales_in_history(root: Path, path: str) -> set[float]:
    """Every value the `scale` tensor of `path` had in any commit of the current branch."""
    found = set()
    with Repo.open(root) as repo:
        for info in repo.log():
            files = repo.model_files(info.id)
            if path in files:
                entry = files[path].by_name()["scale"]
                found.add(float(np.frombuffer(repo.tensor_bytes(entry), np.float32)[0]))
    return found


@pytest.fixture
def repo_root(tmp_path) -> Path:
    root = tmp_path / "repo"
    Repo.init(root).close()
    write_model_folder(root / "model", random_weights(0, rows=64, cols=16))
    assert run_forked(root, ["add", "model"], None).exit_code == 0
    assert run_forked(root, ["commit", "-m", "base"], None).exit_code == 0
    return root


def _committer(root: Path, k: int) -> int:
    os.chdir(root)
    os.environ.update(WAIT)
    for i in range(ROUNDS):
        write_model_folder(root / f"p{k}", versioned(k, k * 100 + i))
        if mvc_in_child("add", f"p{k}") != 0:
            return 10
        # 1 = "nothing to commit": the other process's commit already took our staged file.
        if mvc_in_child("commit", "-m", f"p{k} v{i}") not in (0, 1):
            return 11
    return 0


def test_two_processes_committing_lose_nothing(repo_root):
    pids = [fork_function(_committer, repo_root, k) for k in (1, 2)]
    assert [exit_code_of(pid) for pid in pids] == [0, 0]
    for k in (1, 2):
        expected = {float(k * 100 + i) for i in range(ROUNDS)}
        assert scales_in_history(repo_root, f"p{k}/model.safetensors") == expected
    with Repo.open(repo_root) as repo:
        assert repo.fsck() == []
        assert repo.status().clean
        assert not (repo.mvc_dir / "lock").exists()


def test_a_held_lock_gives_a_clear_message(repo_root):
    write_model_folder(repo_root / "model", fine_tuned(random_weights(0, rows=64, cols=16)))
    with Repo.open(repo_root) as repo, repo_lock(repo.mvc_dir / "lock"):
        proc = mvc_subprocess(repo_root, "commit", "-am", "blocked", env={"MVC_LOCK_WAIT": "0.5"})
        _, err = proc.communicate(timeout=120)
        head = repo.head()
    assert proc.returncode == 1
    assert err.splitlines()[0] == (
        f"mvc: error: another mvc process holds the repository lock (pid {os.getpid()})"
    )
    assert "Traceback" not in err
    with Repo.open(repo_root) as repo:
        assert repo.head() == head  # nothing happened
        assert repo.status().unstaged == {"model/model.safetensors": "modified"}


def test_two_merges_at_once_make_one_merge(repo_root):
    import torch  # noqa: F401

    import mvc.merge.executor  # noqa: F401 - imported before forking, not in each child

    base = random_weights(0, rows=64, cols=16)
    for branch, seed, tensor in (("a", 1, "layer.0.weight"), ("b", 2, "layer.1.weight")):
        assert run_forked(repo_root, ["switch", "-c", branch, "main"], None).exit_code == 0
        write_model_folder(repo_root / "model", fine_tuned(base, seed, only=(tensor,)))
        assert run_forked(repo_root, ["commit", "-am", branch], None).exit_code == 0
    assert run_forked(repo_root, ["switch", "a"], None).exit_code == 0
    with Repo.open(repo_root) as repo:
        a, b = repo.resolve("a"), repo.resolve("b")
    children = [start_forked(repo_root, ["merge", "b", "-m", "m"], env=WAIT) for _ in range(2)]
    outcomes = [wait_forked(*child) for child in children]
    # The second merge waits for the lock, then finds b already merged.
    assert [o.exit_code for o in outcomes] == [0, 0]
    with Repo.open(repo_root) as repo:
        head = repo.commit_info("HEAD")
        assert set(head.parents) == {a, b}
        assert repo.resolve("HEAD~1") == a
        assert repo.fsck() == []
        assert repo.status().clean


def _committer_on_main(root: Path) -> int:
    os.chdir(root)
    os.environ.update(WAIT)
    for i in range(ROUNDS):
        write_model_folder(root / "model", versioned(0, 1000 + i))
        if mvc_in_child("commit", "-am", f"v{i}") != 0:
            return 10
    return 0


def _collector(root: Path) -> int:
    os.chdir(root)
    os.environ.update(WAIT)
    return max(mvc_in_child("gc") for _ in range(ROUNDS))


def test_gc_during_commits_keeps_every_commit(repo_root):
    pids = [fork_function(_committer_on_main, repo_root), fork_function(_collector, repo_root)]
    assert [exit_code_of(pid) for pid in pids] == [0, 0]
    path = "model/model.safetensors"
    assert scales_in_history(repo_root, path) == {1.5} | {1000.0 + i for i in range(ROUNDS)}
    with Repo.open(repo_root) as repo:
        assert repo.fsck() == []
        last = snapshot(repo_root)
        for info in repo.log():
            repo.checkout(info.id, force=True)  # every object of every commit survived gc
        repo.switch("main", force=True)
        assert snapshot(repo_root) == last


def test_two_lockers_finding_one_stale_lock_never_both_hold_it(tmp_path, monkeypatch):
    """Widen the check-and-remove window: still only one holder at a time."""
    from mvc.repo import mutex

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "lock"
    lock.write_text(f"{dead.pid} {socket.gethostname()}\n")
    read_owner = mutex._owner

    def slow_owner(path):
        owner = read_owner(path)
        time.sleep(0.2)  # both threads see the dead owner before either removes it
        return owner

    monkeypatch.setattr(mutex, "_owner", slow_owner)
    holders, overlaps, acquired, errors = [], [], [], []

    def take() -> None:
        try:
            with mutex.repo_lock(lock, wait_seconds=10):
                acquired.append(threading.get_ident())
                holders.append(threading.get_ident())
                if len(holders) > 1:
                    overlaps.append(tuple(holders))
                time.sleep(0.3)
                holders.remove(threading.get_ident())
        except BaseException as err:  # a thread's exception would otherwise only warn
            errors.append(err)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and not errors
    assert len(acquired) == 2 and not overlaps and not lock.exists()
