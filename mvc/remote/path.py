"""A remote on a filesystem path (a shared disk): the key `a/b` is the file `<root>/a/b`.

Objects are written to a temp file in their folder, fsynced and renamed, so readers (and
`list`) only ever see complete objects and an interrupted push leaves nothing half-written.
A ref moves under `<ref>.lock`, created with O_CREAT|O_EXCL and holding the writer's pid:
the lock serialises the read-compare-write of two pushers on any filesystem where
O_EXCL is atomic, and a lock left by a dead process is cleared (with a note).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from mvc.errors import LockedError, RemoteError
from mvc.files import TEMP_PREFIX, atomic_write
from mvc.remote.transport import RefConflict, RemoteNotFoundError
from mvc.repo.mutex import repo_lock

LOCK_SUFFIX = ".lock"
REF_LOCK_WAIT_SECONDS = 10.0


def _token(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()


class PathTransport:
    """Remote storage in a directory (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
            raise RemoteError(f"invalid remote key '{key}'")
        return self.root.joinpath(*parts)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise RemoteNotFoundError(
                f"remote {self.url} does not exist",
                hint="check the URL, or push to it first to create it",
            )

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            raise RemoteNotFoundError(f"'{key}' not found on remote {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if not path.is_file():
            self._write_atomic(path, data)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, prefix=TEMP_PREFIX)
        except OSError as exc:
            raise RemoteError(f"cannot write to remote {self.url}: {exc.strerror}") from None

    def list(self, prefix: str) -> Iterator[str]:
        top = self.root.joinpath(*[p for p in prefix.split("/") if p])
        if not top.is_dir():
            return
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in sorted(files):
                if name.startswith(".") or name.endswith(LOCK_SUFFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key

    def read_ref(self, name: str) -> tuple[bytes | None, str | None]:
        try:
            value = self._path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        return value, _token(value)

    def cas_ref(self, name: str, value: bytes, expected_token: str | None) -> str:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RemoteError(f"cannot write to remote {self.url}: {exc.strerror}") from None
        lock = path.with_name(path.name + LOCK_SUFFIX)
        try:
            with repo_lock(lock, wait_seconds=REF_LOCK_WAIT_SECONDS):
                _, current = self.read_ref(name)
                if current != expected_token:
                    raise RefConflict(name)
                self._write_atomic(path, value)
        except LockedError:
            raise RemoteError(
                f"ref {name} on remote {self.url} is locked by another push",
                hint=f"try again; if no push is running, delete {lock}",
            ) from None
        return _token(value)
