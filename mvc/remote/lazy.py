"""What a lazy fetch brings: every git object, but tensor objects only where they are used.

A repository whose remote is its promisor (see `mvc.repo.promised`) fetches the history
(commits, trees, manifests: small) and only the tensor objects of the branches it has
checked out or was asked for, at their tips; everything else stays promised and is
fetched on demand (`mvc.remote.promisor`). `--all-objects` completes the local copy.
"""

from __future__ import annotations

from collections.abc import Iterable

from mvc.remote.config import upstream
from mvc.repo import Repo


def checked_out_branches(repo: Repo, remote: str, heads: Iterable[str]) -> list[str]:
    """The remote branch the current branch tracks (or of the same name), if it exists."""
    branch = repo.current_branch()
    if branch is None:
        return []
    tracked = upstream(repo, branch)
    name = tracked[1] if tracked and tracked[0] == remote else branch
    return [name] if name in set(heads) else []


def missing_live_objects(repo: Repo) -> list[str]:
    """Every tensor object a reachable commit or the index needs that is not stored here."""
    return sorted(oid for oid in repo.live_objects() if not repo.store.has(oid))
