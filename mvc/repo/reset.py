"""`mvc reset [--soft|--mixed|--hard] REV`: move the current branch, as git does.

--soft moves only the branch; --mixed (the default) also makes the index match REV and
leaves the work tree alone, so the difference shows as unstaged changes; --hard makes the
work tree match too, discarding uncommitted changes. The revision is resolved before
anything moves, so an unknown one changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mvc.errors import MvcError
from mvc.repo.commits import clear_merge_state
from mvc.repo.staging import Staging

if TYPE_CHECKING:
    from mvc.repo.repository import Repo

MODES = ("soft", "mixed", "hard")


def reset(repo: Repo, rev: str = "HEAD", mode: str = "mixed") -> str:
    """Point the current branch (or detached HEAD) at `rev`; returns its commit id."""
    if mode not in MODES:
        raise MvcError(f"unknown reset mode '{mode}'", hint="use --soft, --mixed or --hard")
    with repo.locked():
        target = repo.resolve(rev)
        head = repo.head()
        if mode == "hard":
            repo.update_worktree(target, force=True)
        elif mode == "mixed":
            _reset_index(repo, target)
        repo.move_branch(head, target, f"reset: moving to {rev}")
        clear_merge_state(repo)
    return target


def _reset_index(repo: Repo, target: str) -> None:
    """The index holds `target`'s files; entries whose blob changes lose their stat, so
    `status` compares those files by content instead of trusting the stat fast path."""
    staging = Staging(repo.git)
    files = repo.tree_files(target)
    for path, (blob_id, mode) in files.items():
        current = staging.get(path)
        if current is None or current.blob_id != blob_id or current.mode != mode:
            staging.set(path, blob_id, None, mode)
    for path in staging.paths():
        if path not in files:
            staging.remove(path)
    staging.write()
