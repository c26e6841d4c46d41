"""Tidy what a killed mvc process left half-done in `.git` and the work tree.

dulwich writes every git file (loose objects, the index, refs) through a `<name>.lock`
file that it renames into place; a process killed in between leaves the `.lock` behind, and
dulwich then refuses to write that file ever again (`FileLocked`). Every git write of mvc
happens under the repository lock, so once that lock is known to be stale (its owner is
gone) no live process can own any of these files: they are removed, and the interrupted
command can simply be run again.

Files in the work tree are written to a hidden temp name beside the target and renamed
(`.<name>.<12 hex>.tmp`, by `mvc.files.atomic_write`); a kill in between leaves that temp
file, which would show up as untracked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_WORKTREE_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")

_TOP_LEVEL_LOCKS = ("index.lock", "HEAD.lock", "ORIG_HEAD.lock", "packed-refs.lock", "config.lock")


def clear_stale_git_locks(git_dir: Path) -> list[Path]:
    """Remove the dulwich lock files under `git_dir`; the caller holds a recovered repo lock."""
    candidates = [git_dir / name for name in _TOP_LEVEL_LOCKS]
    candidates.extend(git_dir.glob("objects/??/*.lock"))
    candidates.extend(git_dir.glob("refs/**/*.lock"))
    removed = []
    for path in candidates:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def clear_stale_worktree_temps(root: Path, tracked: set[str]) -> list[Path]:
    """Remove untracked temp files of interrupted atomic writes anywhere in the work tree."""
    removed = []
    for folder, dirs, names in os.walk(root):
        if Path(folder) == root and ".git" in dirs:
            dirs.remove(".git")
        for name in names:
            path = Path(folder, name)
            if _WORKTREE_TEMP.match(name) and path.relative_to(root).as_posix() not in tracked:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
