"""Durable file writes shared by every layer (outside the layer stack, like mvc.errors).

A file that readers may see is written to a temp name in its own folder, fsynced, renamed
over the final name, and then the folder is fsynced: a crash leaves either the old file or
the complete new one, never half of one, and the rename survives a power cut. The temp
name's shape matters to whoever tidies after a crash, so callers choose it by prefix:
hidden ``.<name>.<12 hex>.tmp`` beside a work-tree file (recovery removes those), or
``.tmp-<name>-<12 hex>`` (``TEMP_PREFIX``) in a store folder (gc removes those).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
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


def publish(tmp: Path, path: Path, mode: int | None = None) -> None:
    """Rename a complete, fsynced temp file over ``path`` and make the rename durable.

    The second half of ``atomic_write``, for writers that fill the temp file themselves
    (by positional writes, in any order: checkout's ``RowWriter``). ``mode`` sets the
    permission bits first. On an error the temp file is removed and ``path`` is unchanged.
    """
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: Path,
    data: bytes | Iterable[bytes | bytearray | memoryview],
    *,
    mode: int | None = None,
    prefix: str | None = None,
) -> None:
    """Write ``data`` (bytes, or chunks streamed in order) to ``path`` all or nothing.

    ``mode`` sets the permission bits before the rename (otherwise the umask decides);
    ``prefix`` picks the temp name's shape (see the module docstring). An error raised
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
    publish(tmp, path, mode)
