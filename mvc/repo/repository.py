"""`mvc.Repo`: a git repository whose model files live in the tensor store.

The class is the Python API: it opens and creates repositories, and gathers the
operations, which live in modules with one job each and take the repository as their
first argument:

- `refs`: HEAD, branches, revision names, compare-and-swap moves;
- `trees`: what a commit holds (files, blobs, manifests);
- `changes`: staging (`add`, `rm`) and `status`;
- `checkout`: moving the work tree and index between file sets, the dirty check;
- `commits`: writing commits, identity, the pending-commit journal, MERGE_HEAD;
- `maintenance`: reachable commits, live objects, `fsck`, `gc`;
- `state_dicts`: torch state_dicts in and out (imported on first use).

Those functions are attached below as methods (a function stored on a class is a method
whose first argument is the instance), so `repo.add(paths)` is `changes.add(repo, paths)`.
The state (paths, dulwich repo, store, lock) is `RepoCore`'s. It keeps git's model: a work
tree, an index (with manifests as the blobs of model files), commits and refs in `.git`
written with dulwich, and the tensor objects in `.git/mvc/objects`. Every mutation holds
the repository lock; refs move by compare-and-swap; files are written atomically, so a
crash at any point leaves every committed model intact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dulwich.repo import Repo as GitRepo

from mvc.errors import MvcError, NotFoundError
from mvc.repo import changes, checkout, commits, maintenance, refs, trees
from mvc.repo.changes import Status
from mvc.repo.commits import CommitInfo
from mvc.repo.core import DEFAULT_BRANCH, MVC_DIR, RepoCore
from mvc.repo.refs import BranchInfo

__all__ = ["BranchInfo", "CommitInfo", "Repo", "Status"]


class Repo(RepoCore):
    """An mvc repository (work tree + `.git` + tensor store)."""

    # ------------------------------------------------------------------ opening
    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".") -> Repo:
        """Create a repository at `path` whose first branch is `main`."""
        root = Path(path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if (root / ".git" / MVC_DIR).is_dir():
            raise MvcError(f"{root} is already an mvc repository")
        if (root / ".git").exists():
            git = GitRepo(str(root))
        else:
            git = GitRepo.init(str(root))
        git.refs.set_symbolic_ref(b"HEAD", f"refs/heads/{DEFAULT_BRANCH}".encode())
        config = git.get_config()
        config.set((b"mvc",), b"version", b"1")
        config.write_to_path()
        git.close()
        (root / ".git" / MVC_DIR / "objects").mkdir(parents=True, exist_ok=True)
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".") -> Repo:
        """Open the repository containing `path` (searching upward, like git)."""
        start = Path(path).resolve()
        for candidate in (start, *start.parents):
            if (candidate / ".git" / MVC_DIR).is_dir():
                return cls(candidate)
        raise NotFoundError(
            f"not an mvc repository (or any parent up to /): {start}",
            hint="run `mvc init` first",
        )

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recover(self) -> None:
        """After a crashed process: tidy up, then finish a commit it left half applied."""
        super().recover()
        commits.finish_pending_commit(self)

    # ------------------------------------------------------------------ refs
    current_branch = refs.current_branch
    head = refs.head
    resolve = refs.resolve
    branches = refs.branches
    create_branch = refs.create_branch
    delete_branch = refs.delete_branch
    move_branch = refs.move_branch
    is_ancestor = refs.is_ancestor
    merge_base = refs.merge_base

    # ------------------------------------------------------------------ trees and files
    tree_files = trees.tree_files
    files = trees.files
    model_files = trees.model_files
    manifest = trees.manifest
    read_file = trees.read_file
    iter_chunks = trees.iter_chunks
    tensor_bytes = trees.tensor_bytes

    # ------------------------------------------------------------------ staging
    add = changes.add
    rm = changes.rm
    status = changes.status

    # ------------------------------------------------------------------ commits
    commit = commits.commit
    commit_tree = commits.commit_tree
    commit_info = commits.commit_info
    log = commits.log
    set_merge_state = commits.set_merge_state

    # ------------------------------------------------------------------ checkout
    switch = checkout.switch
    update_worktree = checkout.update_worktree
    stage_tree = checkout.stage_tree
    checkout = checkout.checkout  # last: from here on `checkout` names the method

    # ------------------------------------------------------------------ maintenance
    reachable_commits = maintenance.reachable_commits
    live_objects = maintenance.live_objects
    fsck = maintenance.fsck
    gc = maintenance.gc

    # ------------------------------------------------------------------ state dicts
    def commit_state_dict(
        self,
        state_dict: Mapping[str, Any],
        path: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Commit a torch state_dict as the model file `path` without writing it first."""
        from mvc.repo.state_dicts import commit_state_dict

        return commit_state_dict(self, state_dict, path, message, metadata)

    def load_state_dict(self, rev: str, path: str) -> dict[str, Any]:
        """A model file of a commit as a dict of torch tensors."""
        from mvc.repo.state_dicts import load_state_dict

        return load_state_dict(self, rev, path)
