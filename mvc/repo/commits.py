"""Commits: writing them (from the index or from a library-built file set), who wrote them,
the pending-commit journal, and the state of an uncommitted merge (MERGE_HEAD).

A library commit that also moves the work tree journals its intent first: a process
killed with the work tree half written leaves the journal, and the next command that
takes the lock rolls the commit forward (`finish_pending_commit`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dulwich.objects import Commit

from mvc.errors import MvcError
from mvc.files import atomic_write
from mvc.repo.changes import stage
from mvc.repo.checkout import Target, apply_files, built_target
from mvc.repo.core import RepoCore
from mvc.repo.manifest import Manifest
from mvc.repo.refs import head, move_branch, resolve
from mvc.repo.staging import Staging
from mvc.repo.trees import tree_files

PENDING_COMMIT = "MVC_PENDING_COMMIT"  # in .git: "<old head or -> <new commit>"


@dataclass(frozen=True)
class CommitInfo:
    """A commit as `log` and `show` present it."""

    id: str
    parents: tuple[str, ...]
    author: str
    date: int
    timezone: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "author": self.author,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.date)) + "Z",
            "message": self.message,
        }


def commit_info(repo: RepoCore, rev: str) -> CommitInfo:
    return _commit_info(repo.git[resolve(repo, rev).encode()])


def log(repo: RepoCore, rev: str = "HEAD", max_count: int | None = None) -> list[CommitInfo]:
    """Commits reachable from `rev`, newest first."""
    if rev == "HEAD" and head(repo) is None:
        return []
    sha = resolve(repo, rev).encode()
    walker = repo.git.get_walker(include=[sha], max_entries=max_count)
    return [_commit_info(entry.commit) for entry in walker]


def commit(repo: RepoCore, message: str, all: bool = False) -> str:
    """Commit the index (with `all`, first stage every change to a tracked file)."""
    if not message.strip():
        raise MvcError("empty commit message", hint="pass -m MESSAGE")
    with repo.locked():
        staging = Staging(repo.git)
        if all:
            tracked = staging.paths()
            present = [rel for rel in tracked if (repo.root / rel).exists()]
            stage(repo, staging, present)
            for rel in tracked:
                if rel not in present:
                    staging.remove(rel)
        tree_id = staging.write_tree()
        old_head = head(repo)
        heads = merge_heads(repo)
        if old_head is not None and not heads:
            if repo.git[old_head.encode()].tree == tree_id:
                raise MvcError(
                    "nothing to commit, working tree clean" if not all else "nothing to commit",
                    hint="stage changes with `mvc add`",
                )
        parents = ([old_head] if old_head else []) + heads
        sha = _write_commit(repo, tree_id, parents, message)
        staging.write()
        move_branch(repo, old_head, sha, f"commit: {message.splitlines()[0]}")
        clear_merge_state(repo)
    return sha


def commit_tree(
    repo: RepoCore,
    files: Mapping[str, Manifest | bytes],
    parents: list[str],
    message: str,
    update_ref: bool = True,
    update_worktree: bool = True,
    prewritten: Mapping[str, Path] | None = None,
    force: bool = False,
) -> str:
    """Commit a complete file set built in the library (merge, unmerge, lock results).

    Model files are given as manifests, anything else as bytes. With `update_ref` the
    current branch moves to the new commit (CAS against its parent); with
    `update_worktree` the work tree and index follow it. `prewritten` maps paths to
    files already holding their exact content (in `scratch_dir()`), which are moved
    into the work tree instead of being written again from the store. `force` skips the
    dirty check, for a caller that made it itself under the same lock (a merge).
    """
    from dulwich.index import commit_tree as write_tree

    with repo.locked():  # every git write happens under the lock (see mvc.repo.recovery)
        target = built_target(repo, files, prewritten)
        blobs = [(path.encode(), blob, mode) for path, (blob, mode) in target.files.items()]
        sha = _write_commit(repo, write_tree(repo.git.object_store, blobs), parents, message)
        if update_ref:
            old_head = head(repo)
            if update_worktree:
                # Journal the intent first: if we die while the work tree is half
                # written, the next command rolls the commit forward (see RepoCore.locked).
                journal = f"{old_head or '-'} {sha}\n".encode()
                atomic_write(_pending_path(repo), journal, mode=0o644)
                apply_files(repo, tree_files(repo, old_head), target, force=force)
            move_branch(repo, old_head, sha, f"commit: {message.splitlines()[0]}")
            _pending_path(repo).unlink(missing_ok=True)
    return sha


def _pending_path(repo: RepoCore) -> Path:
    return repo.root / ".git" / PENDING_COMMIT


def finish_pending_commit(repo: RepoCore) -> None:
    """Complete a library commit whose process died between writing files and the ref."""
    path = _pending_path(repo)
    try:
        old, new = path.read_text().split()
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return
    old_head = None if old == "-" else old
    if head(repo) == old_head and new.encode() in repo.git.object_store:
        apply_files(repo, tree_files(repo, old_head), Target(tree_files(repo, new)), force=True)
        move_branch(repo, old_head, new, "commit: finished after an interruption")
        print(f"mvc: note: finished a commit interrupted by a crash ({new[:12]})", file=sys.stderr)
    path.unlink(missing_ok=True)


def _write_commit(repo: RepoCore, tree_id: bytes, parents: list[str], message: str) -> str:
    commit = Commit()
    commit.tree = tree_id
    commit.parents = [p.encode() for p in parents]
    commit.author = commit.committer = identity(repo)
    now = int(os.environ.get("MVC_COMMIT_TIME", time.time()))
    commit.author_time = commit.commit_time = now
    offset = -time.timezone if not time.localtime(now).tm_isdst else -time.altzone
    commit.author_timezone = commit.commit_timezone = offset
    commit.encoding = b"UTF-8"
    commit.message = message.rstrip("\n").encode() + b"\n"
    repo.git.object_store.add_object(commit)
    return commit.id.decode()


def identity(repo: RepoCore) -> bytes:
    """`Name <email>`: MVC_AUTHOR_* first, then git's user.name/user.email, then $USER."""
    name = os.environ.get("MVC_AUTHOR_NAME")
    email = os.environ.get("MVC_AUTHOR_EMAIL")
    config = repo.git.get_config_stack()
    if not name:
        try:
            name = config.get((b"user",), b"name").decode()
        except KeyError:
            name = os.environ.get("USER", "mvc")
    if not email:
        try:
            email = config.get((b"user",), b"email").decode()
        except KeyError:
            email = f"{name}@localhost"
    return f"{name} <{email}>".encode()


def _commit_info(commit: Commit) -> CommitInfo:
    return CommitInfo(
        id=commit.id.decode(),
        parents=tuple(p.decode() for p in commit.parents),
        author=commit.author.decode(errors="replace"),
        date=commit.author_time,
        timezone=commit.author_timezone,
        message=commit.message.decode(errors="replace").rstrip("\n"),
    )


# ------------------------------------------------------------------ merge state
def merge_heads(repo: RepoCore) -> list[str]:
    """The extra parents an uncommitted merge left for the next commit (MERGE_HEAD)."""
    path = repo.root / ".git" / "MERGE_HEAD"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def set_merge_state(repo: RepoCore, heads: list[str], message: str) -> None:
    """Record an uncommitted merge (`merge --no-commit`): the next commit gets these parents."""
    heads_text = "".join(f"{h}\n" for h in heads)
    atomic_write(repo.root / ".git" / "MERGE_HEAD", heads_text.encode(), mode=0o644)
    atomic_write(repo.root / ".git" / "MERGE_MSG", message.encode(), mode=0o644)


def clear_merge_state(repo: RepoCore) -> None:
    for name in ("MERGE_HEAD", "MERGE_MSG"):
        (repo.root / ".git" / name).unlink(missing_ok=True)
