"""Refs: HEAD, branches, revision names, and moving a branch by compare-and-swap.

A branch moves only from the value the command based its work on (`move_branch`), so two
processes committing at once cannot both win: the loser is told to run again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.repo.core import RepoCore
from mvc.repo.revisions import resolve_commit


@dataclass(frozen=True)
class BranchInfo:
    name: str
    commit: str
    current: bool


def current_branch(repo: RepoCore) -> str | None:
    """The checked-out branch, or None when HEAD is detached."""
    chain, _ = repo.git.refs.follow(b"HEAD")
    target = chain[-1] if len(chain) > 1 else None
    if target and target.startswith(b"refs/heads/"):
        return target[len(b"refs/heads/") :].decode()
    return None


def head(repo: RepoCore) -> str | None:
    """The commit HEAD points at, or None in an empty repository."""
    try:
        return repo.git.refs[b"HEAD"].decode()
    except KeyError:
        return None


def resolve(repo: RepoCore, rev: str) -> str:
    """The full commit id that `rev` names (branch, tag, short id, HEAD~2, ...)."""
    return resolve_commit(repo.git, rev).decode()


def branches(repo: RepoCore) -> list[BranchInfo]:
    current = current_branch(repo)
    result = []
    for ref in sorted(repo.git.refs.keys(base=b"refs/heads/")):
        name = ref.decode()
        result.append(
            BranchInfo(name, repo.git.refs[b"refs/heads/" + ref].decode(), name == current)
        )
    return result


def create_branch(repo: RepoCore, name: str, start: str = "HEAD", force: bool = False) -> str:
    _check_branch_name(name)
    sha = resolve(repo, start).encode()
    ref = f"refs/heads/{name}".encode()
    with repo.locked():
        if ref in repo.git.refs and not force:
            raise MvcError(f"a branch named '{name}' already exists")
        if force:
            repo.git.refs[ref] = sha
        elif not repo.git.refs.add_if_new(ref, sha):
            raise MvcError(f"a branch named '{name}' already exists")
    return sha.decode()


def delete_branch(repo: RepoCore, name: str, force: bool = False) -> None:
    ref = f"refs/heads/{name}".encode()
    if ref not in repo.git.refs:
        raise NotFoundError(f"branch '{name}' not found")
    if name == current_branch(repo):
        raise MvcError(f"cannot delete the checked-out branch '{name}'")
    with repo.locked():
        target = repo.git.refs[ref]
        current = head(repo)
        if not force and current and not is_ancestor(repo, target.decode(), current):
            raise MvcError(
                f"branch '{name}' is not merged into HEAD",
                hint=f"use `mvc branch -D {name}` to delete it anyway",
            )
        repo.git.refs.remove_if_equals(ref, target)


def move_branch(repo: RepoCore, expected_old: str | None, new: str, message: str = "") -> None:
    """Move the current branch (or detached HEAD) from `expected_old` to `new` (CAS)."""
    branch = current_branch(repo)
    ref = f"refs/heads/{branch}".encode() if branch else b"HEAD"
    old = expected_old.encode() if expected_old else None
    if old is None:
        ok = repo.git.refs.add_if_new(ref, new.encode(), message=message.encode() or None)
    else:
        ok = repo.git.refs.set_if_equals(ref, old, new.encode(), message=message.encode() or None)
    if not ok:
        raise ConflictError(
            f"{'branch ' + branch if branch else 'HEAD'} moved while this command ran",
            hint="another process committed; run the command again",
        )


def is_ancestor(repo: RepoCore, ancestor: str, descendant: str) -> bool:
    from dulwich.graph import can_fast_forward

    return bool(can_fast_forward(repo.git, ancestor.encode(), descendant.encode()))


def merge_base(repo: RepoCore, revs: Iterable[str]) -> list[str]:
    """Best common ancestors of the given revisions (several for criss-cross histories)."""
    from dulwich.graph import find_merge_base, find_octopus_base

    shas = [resolve(repo, rev).encode() for rev in revs]
    bases = find_merge_base(repo.git, shas) if len(shas) == 2 else find_octopus_base(repo.git, shas)
    return sorted(base.decode() for base in bases)


def tracking_candidate(repo: RepoCore, name: str) -> str | None:
    """The one remote-tracking branch called `name` (`switch` creates a branch from it)."""
    matches = [
        ref.decode()
        for ref in repo.git.refs.keys(base=b"refs/remotes/")
        if ref.decode().split("/", 1)[-1] == name
    ]
    return f"refs/remotes/{matches[0]}" if len(matches) == 1 else None


def _check_branch_name(name: str) -> None:
    bad = (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".lock", "."))
        or any(c in name for c in " ~^:?*[\\\x7f")
        or ".." in name
        or "//" in name
        or "@{" in name
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        raise MvcError(f"'{name}' is not a valid branch name")
