"""What a commit changed, file by file (for `show`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvc.repo.repository import Repo


def changed_files(repo: Repo, commit_id: str) -> dict[str, str]:
    """path -> added|modified|deleted, against the commit's first parent.

    A shallow clone's boundary commit has parents that are not here: like git, it is
    shown as adding every file it holds."""
    info = repo.commit_info(commit_id)
    new = repo.tree_files(info.id)
    parent = info.parents[0] if info.parents else None
    present = parent is not None and parent.encode() in repo.git.object_store
    old = repo.tree_files(parent) if present else {}
    changes = {}
    for path in sorted(set(old) | set(new)):
        if path not in old:
            changes[path] = "added"
        elif path not in new:
            changes[path] = "deleted"
        elif old[path] != new[path]:
            changes[path] = "modified"
    return changes
