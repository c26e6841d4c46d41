"""Run an mvc command and kill -9 it at a chosen filesystem write.

Why not only a timer: an mvc command spends most of its wall time importing, so random
delays mostly kill it before it has written anything. Instead the command runs in a forked
child (no re-import, so each kill point costs milliseconds) that counts the operations that
change the disk (opening for write, write, fsync, rename/replace, unlink, mkdir, rmdir,
symlink, truncate) through a Python audit hook plus wrappers around ``os.write`` and
``os.fsync``, and sends itself SIGKILL just *before* the Nth one: the process dies with
exactly the files it had written so far, as after a real ``kill -9`` (the page cache keeps
what was written; only an OS crash would lose unsynced data, which is not simulated here).

A counting run (``kill_at=None``) measures how many such operations the command performs,
so callers can draw kill points from a seeded RNG over the whole command. ``run_killed_by_timer``
is the blunt variant: a real CLI subprocess killed from outside after a delay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_MUTATING_EVENTS = {
    "os.rename",  # also raised by os.replace
    "os.remove",
    "os.rmdir",
    "os.mkdir",
    "os.symlink",
    "os.truncate",
    "os.link",
    "shutil.rmtree",
}
_REAL_WRITE = os.write
_REAL_FSYNC = os.fsync


@dataclass(frozen=True)
class Outcome:
    """How a forked command ended: killed at a write, or exited with a code."""

    killed: bool
    exit_code: int | None
    events: int  # mutating operations performed (counting runs only; -1 otherwise)


def _is_write_open(args: tuple) -> bool:
    _path, mode, flags = args
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _install_hook(kill_at: int | None) -> list[int]:
    """Count mutating operations; SIGKILL this process just before number `kill_at`."""
    counter = [0]
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            counter[0] += 1
            n = counter[0]
        if kill_at is not None and n >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def audit(event: str, args: tuple) -> None:
        if event in _MUTATING_EVENTS or (event == "open" and _is_write_open(args)):
            tick()

    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if fd > 2:
            tick()
        return real_write(fd, data)

    def fsync(fd) -> None:  # type: ignore[no-untyped-def]
        tick()
        real_fsync(fd)

    os.write, os.fsync = write, fsync  # type: ignore[assignment]
    sys.addaudithook(audit)
    return counter


def start_forked(
    cwd: Path, args: list[str], kill_at: int | None = None, env: dict | None = None
) -> tuple[int, int]:
    """Fork a child running `mvc ARGS` in `cwd`; returns (pid, fd to read its event count)."""
    from mvc.cli.main import cli

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns to pytest
        code = 70
        try:
            os.close(read_fd)
            os.chdir(cwd)
            os.environ.update(env or {})
            sys.dont_write_bytecode = True  # lazy imports must not add write events
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until _exit
            counter = _install_hook(kill_at)
            try:
                cli.main(args=args, prog_name="mvc", standalone_mode=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - the exit code reports it
                code = 71
            os.fsync = _REAL_FSYNC  # stop counting our own report
            os.write = _REAL_WRITE
            _REAL_WRITE(write_fd, str(counter[0]).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def wait_forked(pid: int, read_fd: int) -> Outcome:
    """Wait for a child from `start_forked`: killed, or its exit code and event count."""
    chunks = []
    while chunk := os.read(read_fd, 64):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, f"child died of signal {os.WTERMSIG(status)}"
        return Outcome(True, None, -1)
    return Outcome(False, os.WEXITSTATUS(status), int(b"".join(chunks) or b"-1"))


def run_forked(cwd: Path, args: list[str], kill_at: int | None, env: dict | None = None) -> Outcome:
    """Run `mvc ARGS` in a forked child in `cwd`, killed before mutating operation `kill_at`."""
    return wait_forked(*start_forked(cwd, args, kill_at, env))


def count_events(cwd: Path, args: list[str], env: dict | None = None) -> int:
    """How many mutating operations `mvc ARGS` performs when left alone (it must succeed)."""
    outcome = run_forked(cwd, args, None, env)
    assert outcome.exit_code == 0, f"mvc {' '.join(args)} exited {outcome.exit_code}"
    return outcome.events


def mvc_subprocess(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start the real CLI as a separate process (for timer kills and concurrency)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "mvc.cli.main", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_killed_by_timer(cwd: Path, args: list[str], delay: float) -> bool:
    """Start `mvc ARGS` as a subprocess and SIGKILL it after `delay` s; True if it was killed."""
    proc = mvc_subprocess(cwd, *args)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is not None:
        proc.communicate()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True
