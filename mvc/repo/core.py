"""What every repository module works on: the paths, dulwich's repo, the store and the lock.

`Repo` (the Python API) is a `RepoCore` with the operations of `refs`, `trees`, `changes`,
`checkout`, `commits` and `maintenance` attached; those modules take a `RepoCore` and never
import `Repo`, so they can call one another without an import cycle.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dulwich.repo import Repo as GitRepo

from mvc.errors import MvcError
from mvc.repo.mutex import repo_lock
from mvc.repo.recovery import clear_stale_git_locks, clear_stale_worktree_temps
from mvc.repo.staging import Staging
from mvc.repo.worktree import WorkTree
from mvc.store import ObjectStore

DEFAULT_BRANCH = "main"
MVC_DIR = "mvc"
SCRATCH_DIR = "scratch"  # inside MVC_DIR: files built under the lock (see scratch_dir)


class RepoCore:
    """An open repository: work tree, `.git` (through dulwich) and the tensor store."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.git = GitRepo(str(self.root))
        self.mvc_dir = self.root / ".git" / MVC_DIR
        self.store = ObjectStore(self.mvc_dir)
        self.worktree = WorkTree(self.root, self.git)
        self._lock_depth = 0

    def close(self) -> None:
        self.git.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository lock (re-entrant within this object).

        Taking over the lock of a process that died runs `recover` first, so every
        command starts from a tidy repository.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            with repo_lock(self.mvc_dir / "lock") as recovered:
                self._lock_depth = 1
                if recovered:
                    self.recover()
                try:
                    yield
                finally:
                    self._lock_depth = 0
        except OSError as err:
            storage_error = _storage_error(err)
            if storage_error is None:
                raise
            raise storage_error from err

    def recover(self) -> None:
        """Tidy what a killed process left: dulwich lock files, work-tree temps, scratch.

        `Repo` extends this to finish a commit whose journal says it was half applied.
        """
        clear_stale_git_locks(self.root / ".git")
        clear_stale_worktree_temps(self.root, set(Staging(self.git).paths()))
        shutil.rmtree(self.mvc_dir / SCRATCH_DIR, ignore_errors=True)

    def read_blob(self, blob_id: bytes) -> bytes:
        return self.git.object_store[blob_id].as_raw_string()

    def scratch_dir(self) -> Path:
        """A folder inside the repository for files built before they go in the work tree.

        On the work tree's filesystem (so moving a file from it is an atomic rename) but
        outside the work tree, so a file left half-built by a crash is never seen as a
        change; the next command that recovers the crashed process's lock clears it.
        """
        folder = self.mvc_dir / SCRATCH_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder


_STORAGE_ERRNOS = {
    errno.ENOSPC: "free some space and run the command again",
    errno.EDQUOT: "free some space (or raise the quota) and run the command again",
    errno.EROFS: "the repository is on a read-only file system; remount it read-write",
    errno.EACCES: "check the permissions of the repository's files",
    errno.EPERM: "check the permissions of the repository's files",
    errno.EIO: "the disk reported an I/O error; check it, then run `mvc fsck`",
}


def _storage_error(err: OSError) -> MvcError | None:
    """A full, read-only or failing disk under a mutating command, as a one-line error.

    Every write is atomic (temp file, fsync, rename) and refs move last, so what was
    committed before is intact and the command can be run again once the disk is fixed.
    """
    hint = _STORAGE_ERRNOS.get(err.errno or 0)
    if hint is None:
        return None
    where = f": {err.filename}" if err.filename else ""
    return MvcError(f"{err.strerror}{where}", hint=hint)

