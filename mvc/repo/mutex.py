"""The repository write lock: one mutating mvc process at a time.

Commands that change the index, refs or work tree (add, commit, switch, merge, gc, ...)
hold `.git/mvc/lock`, created with O_EXCL and holding the owner's pid and host. A lock whose
process is gone (kill -9) is stale: the next command removes it and says so, so nobody
ever has to clean up by hand. A live owner makes us wait a little, then give up with a
clear message.

Deciding a lock is stale and removing it happen under an ``flock`` on a guard file beside
it (``lock.guard``, never removed). Without it, two processes that read the same stale
lock could both remove it, the second removing the lock the first had just taken, and
both go on. Where ``fcntl`` does not exist (Windows) the check runs unguarded.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from mvc.errors import LockedError

DEFAULT_WAIT_SECONDS = 10.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> tuple[int, str] | None:
    try:
        text = path.read_text()
        pid_text, _, host = text.strip().partition(" ")
        return int(pid_text), host
    except (OSError, ValueError):
        return None


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<lock>.guard`` for the duration of a staleness check."""
    if fcntl is None:
        yield
        return
    fd = os.open(path.with_name(path.name + ".guard"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _clear_if_stale(path: Path) -> bool | None:
    """None while the lock is held; True when we removed a stale lock; False if it was gone."""
    with _guard(path):
        return _clear_if_stale_guarded(path)


def _clear_if_stale_guarded(path: Path) -> bool | None:
    owner = _owner(path)
    if owner is None:
        # Being written right now, or garbage: only garbage old enough is stale.
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        if age < 5:
            return None
    else:
        pid, host = owner
        if host != socket.gethostname() or _pid_alive(pid):
            return None
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    print(
        f"mvc: note: removed a stale lock left by a process that is gone ({path})", file=sys.stderr
    )
    return True


@contextmanager
def repo_lock(path: Path, wait_seconds: float | None = None) -> Iterator[bool]:
    """Hold the lock file at `path` for the duration of the block.

    Yields True when a stale lock had to be removed first: the dead owner may have left
    half-done work that the caller should tidy (see `mvc.repo.recovery`).
    """
    if wait_seconds is None:
        wait_seconds = float(os.environ.get("MVC_LOCK_WAIT", DEFAULT_WAIT_SECONDS))
    deadline = time.monotonic() + wait_seconds
    token = f"{os.getpid()} {socket.gethostname()}\n".encode()
    recovered = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            cleared = _clear_if_stale(path)
            if cleared is not None:
                recovered = recovered or cleared
                continue
            if time.monotonic() >= deadline:
                owner = _owner(path)
                who = f" (pid {owner[0]})" if owner else ""
                raise LockedError(
                    f"another mvc process holds the repository lock{who}",
                    hint="wait for it to finish and run the command again",
                ) from None
            time.sleep(0.05)
            continue
        try:
            os.write(fd, token)
            os.fsync(fd)
        except BaseException:  # a full disk: leave no lock behind that names a live pid
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        break
    try:
        yield recovered
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
