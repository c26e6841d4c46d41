"""Durable file writes shared by every layer (outside the layer stack, like mvc.errors).

A file that readers may see is written to a temp name in its own folder, fsynced, renamed
over the final name, and then the folder is fsynced: a crash leaves either the old file or
the complete new one, never half of one, and the rename survives a power cut. The temp
name's shape matters to whoever tidies after a crash, so callers choose it by prefix:
hidden ``.<name>.<12 hex>.tmp`` beside a work-tree file (recovery removes those), or
``.tmp-<name>-<12 hex>`` (``TEMP_PREFIX``) in a store folder (gc removes those).

A batch of writes (a clone storing hundreds of objects) may hand the folder fsyncs to a
``FolderSyncs`` instead: each file is still fsynced before its rename, so a file that
readers can see is always complete, but each folder is fsynced once, when the batch is
flushed, before anything points at the files (a fetch moves refs after that). Until then a
crash may lose a rename, never expose half a file: the batch is simply fetched again.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

#: Temp files in object folders (local store, path remote, fetch spill) start with this;
#: such a name is never an object.
TEMP_PREFIX = ".tmp-"

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderSyncs:
    """The folder fsyncs a batch of ``atomic_write`` calls owes, each folder done once.

    Thread-safe. The batch's renames and new folders go through ``rename`` and ``mkdir``,
    which number each entry per folder as it appears (under the batch's lock, so no other
    thread of the batch can see an entry that is not numbered yet); an fsync of a folder
    covers every entry numbered before it started. ``durable(path)`` returns once the
    entry is durable, for a file whose meaning depends on another's (a delta object needs
    its base), fsyncing the folder only if no fsync covering it has run or is running.
    An entry the batch did not make was made durable by its own writer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recorded: dict[Path, int] = {}  # folder -> entries numbered in it
        self._synced: dict[Path, int] = {}  # folder -> entries a finished fsync covers
        self._running: dict[Path, tuple[int, threading.Event]] = {}
        self._number: dict[Path, int] = {}  # entry -> its number in its folder

    def _record(self, path: Path) -> None:
        number = self._recorded[path.parent] = self._recorded.get(path.parent, 0) + 1
        self._number[path] = number

    def rename(self, tmp: Path, path: Path) -> None:
        """``os.replace(tmp, path)``, its folder's fsync owed."""
        with self._lock:
            os.replace(tmp, path)
            self._record(path)

    def mkdir(self, folder: Path) -> None:
        """Create ``folder`` (and missing parents) if it is missing, its parent's fsync owed."""
        with self._lock:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                self._record(folder)

    def durable(self, path: Path) -> None:
        """Return once the entry ``path`` (a file or folder) survives a crash."""
        with self._lock:
            number = self._number.get(path)
        if number is not None:
            self._cover(path.parent, number)

    def _cover(self, folder: Path, number: int) -> None:
        while True:
            with self._lock:
                if self._synced.get(folder, 0) >= number:
                    return
                running = self._running.get(folder)
                if running is None:
                    covers, event = self._recorded[folder], threading.Event()
                    self._running[folder] = (covers, event)
            if running is not None:
                running[1].wait()  # then look again: it may not have covered `number`
                continue
            try:
                fsync_dir(folder)
                with self._lock:
                    self._synced[folder] = max(self._synced.get(folder, 0), covers)
            finally:
                with self._lock:
                    del self._running[folder]
                event.set()

    def flush(self, mapper: Callable[..., Iterator] = map) -> None:
        """Fsync every folder still owed (on ``mapper``: a pool's ``map`` overlaps them)."""
        with self._lock:
            owed = [(f, n) for f, n in self._recorded.items() if self._synced.get(f, 0) < n]
        for _ in mapper(lambda item: self._cover(*item), owed):
            pass


def temp_path(path: Path, prefix: str | None = None) -> Path:
    """A fresh random temp name beside ``path`` (same folder, so the final rename is atomic)."""
    token = secrets.token_hex(6)
    if prefix is None:
        return path.with_name(f".{path.name}.{token}.tmp")
    return path.with_name(f"{prefix}{path.name}-{token}")


def create_temp(path: Path, prefix: str | None = None) -> tuple[int, Path]:
    """A new file beside ``path``, opened exclusively under a ``temp_path`` name, so
    concurrent writers of one path never share a temp file."""
    while True:
        tmp = temp_path(path, prefix)
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:
            continue


def publish(
    tmp: Path, path: Path, mode: int | None = None, folder_syncs: FolderSyncs | None = None
) -> None:
    """Rename a complete, fsynced temp file over ``path`` and make the rename durable.

    The second half of ``atomic_write``, also for writers that fill the temp file
    themselves (by positional writes in any order: checkout's ``RowWriter``). ``mode`` sets
    the permission bits first; ``folder_syncs`` takes the folder's fsync for later. On an
    error the temp file is removed and ``path`` is left as it was.
    """
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        if folder_syncs is None:
            os.replace(tmp, path)
        else:
            folder_syncs.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if folder_syncs is None:
        fsync_dir(path.parent)


def atomic_write(
    path: Path,
    data: bytes | Iterable[bytes | bytearray | memoryview],
    *,
    mode: int | None = None,
    prefix: str | None = None,
    folder_syncs: FolderSyncs | None = None,
) -> None:
    """Write ``data`` (bytes, or chunks streamed in order) to ``path`` all or nothing.

    ``mode`` sets the permission bits before the rename (otherwise the umask decides);
    ``prefix`` picks the temp name's shape (see the module docstring); ``folder_syncs``
    takes the folder's fsync for later (the file itself is fsynced before its rename). An error raised
    while writing, including one raised by the ``data`` iterator itself, removes the temp
    file and leaves ``path`` as it was.
    """
    fd, tmp = create_temp(path, prefix)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    publish(tmp, path, mode, folder_syncs)
