"""kill -9 at seeded random points of commit, merge, switch, gc, push and clone.

After every kill: `fsck` is clean, every commit made before checks out byte-identical, and
running the same command again finishes the job (same resulting tree, store or remote as
an uninterrupted run). Kill points are drawn from a seeded RNG over the number of
filesystem writes the command performs (see crash_harness.py); the default run tries a
few per command, the slow run at least 20.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from crash_harness import count_events, mvc_subprocess, run_forked, run_killed_by_timer
from model_factory import fine_tuned, random_weights, snapshot, write_model_folder

from mvc.repo import Repo

FAST_POINTS = 3
SLOW_POINTS = 24


@dataclass
class History:
    """A template repository: base on main, fine-tunes on `a` and `b`, garbage for gc."""

    template: Path
    commits: dict[str, dict[str, bytes]]  # commit id -> work tree snapshot


def mvc_ok(root: Path, *args: str) -> None:
    outcome = run_forked(root, list(args), None)
    assert outcome.exit_code == 0, f"mvc {' '.join(args)} exited {outcome.exit_code}"


def head_of(root: Path) -> str | None:
    with Repo.open(root) as repo:
        return repo.head()


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> History:
    root = tmp_path_factory.mktemp("history") / "repo"
    Repo.init(root).close()
    weights = random_weights(0, rows=256, cols=64)
    commits: dict[str, dict[str, bytes]] = {}

    def commit(*args: str) -> None:
        mvc_ok(root, "commit", *args)
        commits[head_of(root)] = snapshot(root)

    write_model_folder(root / "model", weights)
    mvc_ok(root, "add", "model")
    commit("-m", "base")
    mvc_ok(root, "switch", "-c", "a")
    write_model_folder(root / "model", fine_tuned(weights, 1, only=("layer.0.weight", "scale")))
    commit("-am", "a")
    mvc_ok(root, "switch", "-c", "b", "main")
    write_model_folder(root / "model", fine_tuned(weights, 2, only=("layer.1.weight", "scale")))
    commit("-am", "b")
    # Garbage for gc (enough objects for 20+ kill points): commits on a deleted branch.
    mvc_ok(root, "switch", "-c", "scratch")
    for seed in range(3, 8):
        write_model_folder(root / "model", fine_tuned(weights, seed))
        mvc_ok(root, "commit", "-am", f"scratch {seed}")
    mvc_ok(root, "switch", "a")
    mvc_ok(root, "branch", "-D", "scratch")
    return History(root, commits)


def fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def assert_intact(root: Path, commits: dict[str, dict[str, bytes]]) -> None:
    """fsck is clean and every commit still checks out byte-identical."""
    with Repo.open(root) as repo:
        assert repo.fsck() == []
        for sha, files in commits.items():
            repo.checkout(sha, force=True)
            assert snapshot(root) == files, f"commit {sha} does not check out byte-identical"


def kill_points(root: Path, args: list[str], count: int, seed: int, scratch: Path) -> list[int]:
    """`count` distinct write numbers drawn from a seeded RNG over the command's writes."""
    events = count_events(fresh_copy(root, scratch), args)
    rng = random.Random(seed)
    return sorted(rng.sample(range(1, events + 1), min(count, events)))


@dataclass
class Scenario:
    args: list[str]
    prepare: object  # callable(root) -> None, run on the copy before the command


def _prepare_commit(root: Path) -> None:
    with Repo.open(root) as repo:
        repo.switch("main")
    write_model_folder(root / "model", fine_tuned(random_weights(0, rows=256, cols=64), 7))


def _preload_merge() -> None:
    """Import the merge modules once in pytest, so each forked merge does not import them."""
    import mvc.merge.executor  # noqa: F401


SCENARIOS = {
    "commit": Scenario(["commit", "-am", "interrupted fine-tune"], _prepare_commit),
    "merge": Scenario(["merge", "b", "-m", "merge b"], lambda root: _preload_merge()),
    "gc": Scenario(["gc"], lambda root: None),
    # From `a` to `b`: model files decoded on a pool, written at offsets, renamed in.
    "switch": Scenario(["switch", "b"], lambda root: None),
}


def outcome_state(root: Path) -> tuple:
    """What a command leaves behind that a re-run must reproduce: HEAD's tree and the store."""
    with Repo.open(root) as repo:
        head = repo.head()
        tree = repo.git[head.encode()].tree if head else None
        return tree, frozenset(repo.store.ids())


def crash_and_recover(history: History, name: str, count: int, seed: int, tmp: Path) -> int:
    """Kill `name` at seeded points; check intact + re-run converges. Returns kills done."""
    scenario = SCENARIOS[name]
    prepared = fresh_copy(history.template, tmp / "prepared")
    scenario.prepare(prepared)
    reference = fresh_copy(prepared, tmp / "reference")
    mvc_ok(reference, *scenario.args)
    expected = outcome_state(reference)
    kills = 0
    for point in kill_points(prepared, scenario.args, count, seed, tmp / "count"):
        root = fresh_copy(prepared, tmp / "victim")
        outcome = run_forked(root, scenario.args, point)
        kills += outcome.killed
        with Repo.open(root) as repo:
            assert repo.fsck() == [], f"{name} killed before write {point}"
        rerun = run_forked(root, scenario.args, None)
        if rerun.exit_code != 0:
            # Only acceptable when the interrupted run had already finished the job
            # (git's "nothing to commit" for a commit whose ref had moved).
            assert name == "commit" and rerun.exit_code == 1, (name, point, rerun)
        assert outcome_state(root) == expected, f"{name}: re-run after a kill at write {point}"
        assert_intact(root, history.commits)
        scratch = root / ".git" / "mvc" / "scratch"
        assert not scratch.exists() or not any(scratch.iterdir()), "scratch files left behind"
    return kills


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_kill_at_random_writes_then_rerun(history, tmp_path, name):
    kills = crash_and_recover(history, name, FAST_POINTS, seed=8, tmp=tmp_path)
    assert kills >= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_kill_at_many_random_writes_then_rerun(history, tmp_path, name):
    kills = crash_and_recover(history, name, SLOW_POINTS, seed=2024, tmp=tmp_path)
    assert kills >= 20


def test_stale_lock_of_a_killed_commit_is_cleared_with_a_note(history, tmp_path):
    """A commit killed while it holds the lock (and dulwich's index.lock) needs no clean-up."""
    root = fresh_copy(history.template, tmp_path / "repo")
    _prepare_commit(root)
    with Repo.open(root) as repo:
        before = repo.head()
    # Kill just before the index replaces its lock file: both locks are left behind.
    points = range(1, count_events(fresh_copy(root, tmp_path / "count"), ["commit", "-am", "x"]))
    for point in reversed(points):
        victim = fresh_copy(root, tmp_path / "victim")
        run_forked(victim, ["commit", "-am", "x"], point)
        if (victim / ".git" / "index.lock").exists():
            break
    else:
        pytest.fail("no kill point left .git/index.lock behind")
    assert (victim / ".git" / "mvc" / "lock").exists()
    assert head_of(victim) == before
    proc = mvc_subprocess(victim, "commit", "-am", "x", env={"MVC_LOCK_WAIT": "2"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "removed a stale lock" in err
    assert not (victim / ".git" / "index.lock").exists()
    assert not (victim / ".git" / "mvc" / "lock").exists()
    with Repo.open(victim) as repo:
        assert repo.log()[0].message == "x"
        assert repo.fsck() == []


@pytest.mark.slow
def test_kill_by_timer_from_outside(history, tmp_path):
    """The blunt version: a real CLI process SIGKILLed after a seeded random delay."""
    prepared = fresh_copy(history.template, tmp_path / "prepared")
    _prepare_commit(prepared)
    args = ["commit", "-am", "timed"]
    probe = fresh_copy(prepared, tmp_path / "probe")
    start = time.monotonic()
    proc = mvc_subprocess(probe, *args)
    proc.communicate(timeout=120)
    duration = time.monotonic() - start
    rng = random.Random(99)
    kills = 0
    for _ in range(20):
        root = fresh_copy(prepared, tmp_path / "victim")
        kills += run_killed_by_timer(root, args, rng.uniform(0.5, 1.0) * duration)
        with Repo.open(root) as repo:
            assert repo.fsck() == []
        rerun = run_forked(root, args, None)
        assert rerun.exit_code in (0, 1)
        with Repo.open(root) as repo:
            assert repo.log()[0].message == "timed"
        assert_intact(root, history.commits)
    assert kills >= 1


def test_gc_stopped_after_any_deletion_leaves_every_object_decodable(tmp_path, monkeypatch):
    """gc deletes deep deltas before their bases, so no kill point strands a delta."""
    import numpy as np

    from mvc.store import ObjectStore

    store = ObjectStore(tmp_path / "mvc")
    rng = np.random.default_rng(0)
    value = rng.standard_normal(4096).astype(np.float32)
    chain = [store.put(value.tobytes(), "F32", (4096,))]
    for _ in range(6):  # a delta chain: each version a small edit of the previous one
        value = value.copy()
        value[rng.integers(0, 4096, 8)] += 1e-3
        chain.append(store.put(value.tobytes(), "F32", (4096,), base=chain[-1]))
    assert store.info(chain[-1]).depth == 6
    all_ids = set(store.ids())
    real_unlink = Path.unlink
    for allowed in range(1, len(all_ids)):
        calls = []

        def unlink(path, *args, allowed=allowed, calls=calls, **kwargs):
            if len(calls) == allowed:
                raise KeyboardInterrupt  # stands in for the kill
            calls.append(path)
            return real_unlink(path, *args, **kwargs)

        victim = ObjectStore(tmp_path / f"victim{allowed}")
        shutil.copytree(store.objects, victim.objects)
        monkeypatch.setattr(Path, "unlink", unlink)
        with pytest.raises(KeyboardInterrupt):
            victim.gc(live=set())
        monkeypatch.setattr(Path, "unlink", real_unlink)
        for oid in victim.ids():
            victim.verify(oid)
        victim.close()
    store.close()
