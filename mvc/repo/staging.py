"""The staging index: git's own index file, holding manifests for model files.

mvc writes the ordinary `.git/index` through dulwich. For a model file the entry's blob is
the file's manifest (exactly what a git clean filter would produce) and its stat fields
are the real file's, so re-adding an unchanged multi-GB model costs one `stat`, as in git.
"""

from __future__ import annotations

import os
import stat as stat_module
from dataclasses import dataclass
from pathlib import Path

from dulwich.index import Index, IndexEntry, commit_tree, index_entry_from_stat
from dulwich.objects import Blob
from dulwich.repo import Repo as GitRepo


@dataclass(frozen=True)
class StagedFile:
    """What the index knows of one path: its blob id, and whether the file still matches."""

    path: str
    blob_id: bytes
    mode: int


def file_mode(st: os.stat_result) -> int:
    if stat_module.S_ISLNK(st.st_mode):
        return 0o120000
    return 0o100755 if st.st_mode & 0o111 else 0o100644


class Staging:
    """A thin, explicit wrapper over dulwich's Index for mvc's needs."""

    def __init__(self, git: GitRepo) -> None:
        self._git = git
        self._index: Index = git.open_index()

    def paths(self) -> list[str]:
        return sorted(p.decode() for p in self._index.paths())

    def get(self, path: str) -> StagedFile | None:
        try:
            entry = self._index[path.encode()]
        except KeyError:
            return None
        if not isinstance(entry, IndexEntry):
            return None
        return StagedFile(path, entry.sha, entry.mode)

    def stat_matches(self, path: str, file_path: Path) -> bool:
        """True when the file's size, mtime, ctime and inode equal what was indexed."""
        try:
            entry = self._index[path.encode()]
            st = os.lstat(file_path)
        except (KeyError, FileNotFoundError):
            return False
        fresh = index_entry_from_stat(st, entry.sha)
        return (
            fresh.size == entry.size
            and _ns(fresh.mtime) == _ns(entry.mtime)
            and _ns(fresh.ctime) == _ns(entry.ctime)
            and fresh.ino == entry.ino
            and fresh.mode == entry.mode
        )

    def set(self, path: str, blob_id: bytes, file_path: Path | None, mode: int = 0o100644) -> None:
        """Record `path` as `blob_id`; with a file, remember its stat for the fast path."""
        if file_path is not None:
            st = os.lstat(file_path)
            entry = index_entry_from_stat(st, blob_id, mode=file_mode(st))
        else:
            entry = IndexEntry(
                ctime=0, mtime=0, dev=0, ino=0, mode=mode, uid=0, gid=0, size=0, sha=blob_id
            )
        self._index[path.encode()] = entry

    def remove(self, path: str) -> None:
        try:
            del self._index[path.encode()]
        except KeyError:
            pass

    def clear(self) -> None:
        for path in list(self._index.paths()):
            del self._index[path]

    def write(self) -> None:
        """Persist the index (dulwich writes it through a lock file and renames)."""
        self._index.write()

    def write_tree(self) -> bytes:
        """Store the tree objects for the staged state and return the root tree id."""
        blobs = [
            (path, entry.sha, entry.mode)
            for path, entry in self._index.items()
            if isinstance(entry, IndexEntry)
        ]
        return commit_tree(self._git.object_store, blobs)


def store_blob(git: GitRepo, data: bytes) -> bytes:
    blob = Blob.from_string(data)
    git.object_store.add_object(blob)
    return blob.id


def _ns(value: int | float | tuple[int, int]) -> int:
    if isinstance(value, tuple):
        return value[0] * 1_000_000_000 + value[1]
    return int(value * 1_000_000_000)
