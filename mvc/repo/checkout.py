"""Checkout: turning the work tree and index from one file set into another.

Every move refuses first when it would overwrite uncommitted work (the dirty check), then
writes only the files that differ. A file the caller already built with its exact bytes
(a merge's output, in `scratch_dir()`) is renamed into place instead of being decoded
from the store again: that is what a `Target`'s `prewritten` carries.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mvc.errors import ConflictError, MvcError, NotFoundError
from mvc.files import atomic_write, fsync_dir
from mvc.repo.changes import content_blob_id, status
from mvc.repo.core import RepoCore
from mvc.repo.manifest import Manifest
from mvc.repo.materialize import WorktreeChunks, materialize
from mvc.repo.promised import prefetch_checkout
from mvc.repo.refs import create_branch, head, resolve, tracking_candidate
from mvc.repo.staging import Staging, store_blob
from mvc.repo.trees import TreeFiles, tree_files
from mvc.repo.worktree import checked_path, is_model_path, relative_to_root


@dataclass(frozen=True)
class Target:
    """What the work tree and index become: every path's (blob id, mode), and the files
    already built with some paths' exact bytes, to be renamed into place."""

    files: TreeFiles
    prewritten: Mapping[str, Path] = field(default_factory=dict)


def built_target(
    repo: RepoCore,
    files: Mapping[str, Manifest | bytes],
    prewritten: Mapping[str, Path] | None = None,
) -> Target:
    """Store a file set built in the library (manifests for models, bytes otherwise) as
    git blobs: the target a commit or a staged merge moves the work tree to."""
    for path in files:
        checked_path(path)
    blobs: TreeFiles = {}
    for path in sorted(files):
        content = files[path]
        data = content.to_bytes() if isinstance(content, Manifest) else content
        blobs[path] = (store_blob(repo.git, data), 0o100644)
    return Target(blobs, prewritten or {})


def switch(
    repo: RepoCore, name: str, create: bool = False, start: str | None = None, force: bool = False
) -> str:
    """Check out branch `name` (with `create`, make it first at `start` or HEAD).

    A branch this call creates (with `create`, or from a remote-tracking branch) is removed
    again when the checkout fails (dirty work tree, an object missing offline), so a failed
    switch changes nothing.
    """
    with repo.locked():
        ref = f"refs/heads/{name}".encode()
        created = None
        if create:
            created = create_branch(repo, name, start or "HEAD")
        elif ref not in repo.git.refs:
            tracking = tracking_candidate(repo, name)
            if tracking is None:
                raise NotFoundError(
                    f"no branch named '{name}'", hint=f"create it with `mvc switch -c {name}`"
                )
            created = create_branch(repo, name, tracking)
        target = repo.git.refs[ref].decode()
        try:
            move_worktree(repo, head(repo), Target(tree_files(repo, target)), force)
        except BaseException:
            if created is not None:
                repo.git.refs.remove_if_equals(ref, created.encode())
            raise
        repo.git.refs.set_symbolic_ref(b"HEAD", ref)
    return target


def checkout(
    repo: RepoCore, rev: str | None = None, paths: Iterable[str] | None = None, force: bool = False
) -> str | None:
    """`checkout REV` detaches HEAD at REV; with paths, restore those files.

    Paths are restored from REV (and staged) or, without REV, from the index, as git does.
    """
    with repo.locked():
        if paths is not None:
            _restore_paths(repo, rev, [relative_to_root(repo.root, p) for p in paths])
            return None
        if rev is None:
            raise MvcError("nothing to check out", hint="give a revision or `-- PATH`")
        if f"refs/heads/{rev}".encode() in repo.git.refs:
            return switch(repo, rev, force=force)
        target = resolve(repo, rev)
        move_worktree(repo, head(repo), Target(tree_files(repo, target)), force)
        atomic_write(repo.root / ".git" / "HEAD", f"{target}\n".encode(), mode=0o644)
        return target


def _restore_paths(repo: RepoCore, rev: str | None, rels: list[str]) -> None:
    staging = Staging(repo.git)
    if rev is None:
        source = {p: (s.blob_id, s.mode) for p in staging.paths() if (s := staging.get(p))}
    else:
        source = tree_files(repo, rev)
    chosen = {
        path: value
        for path, value in source.items()
        if any(path == rel or path.startswith(f"{rel}/") for rel in rels)
    }
    if not chosen:
        raise NotFoundError(f"pathspec '{' '.join(rels)}' did not match any tracked file")
    for path, (blob_id, mode) in chosen.items():
        _write_worktree_file(repo, path, blob_id, mode)
        staging.set(path, blob_id, repo.root / path)
    staging.write()


def update_worktree(repo: RepoCore, rev: str, force: bool = False) -> None:
    """Make the work tree and index match `rev` (from the current HEAD's state)."""
    with repo.locked():
        move_worktree(repo, head(repo), Target(tree_files(repo, resolve(repo, rev))), force)


def stage_tree(
    repo: RepoCore,
    files: Mapping[str, Manifest | bytes],
    prewritten: Mapping[str, Path] | None = None,
    force: bool = False,
) -> None:
    """Write a library-built file set into the work tree and index, without committing.

    ``force`` skips the dirty check, for a caller that made it under the same lock (a merge).
    """
    with repo.locked():  # every git write happens under the lock (see mvc.repo.recovery)
        move_worktree(repo, head(repo), built_target(repo, files, prewritten), force)


def move_worktree(repo: RepoCore, old: str | None, target: Target, force: bool) -> None:
    """Turn the work tree and index from commit `old` into `target`."""
    apply_files(repo, tree_files(repo, old), target, force)


def apply_files(repo: RepoCore, old_files: TreeFiles, target: Target, force: bool) -> None:
    """Write what differs between `old_files` and `target`, and delete what it drops."""
    new_files = target.files
    staging = Staging(repo.git)
    if not force:
        _refuse_if_dirty(repo, staging, old_files, new_files)
    prefetch_checkout(repo, old_files, new_files)  # a lazy clone's objects, before writing
    todo = [
        (path, blob_id, mode)
        for path, (blob_id, mode) in sorted(new_files.items())
        if not (
            old_files.get(path) == (blob_id, mode)
            and _clean(staging, repo.root, path, blob_id)
        )
    ]
    known = _old_model_chunks(repo, staging, old_files, [p for p, _, _ in todo])
    try:
        for path, blob_id, mode in todo:
            ready = target.prewritten.get(path)
            if ready is None or not _move_into_worktree(repo, path, ready):
                _write_worktree_file(repo, path, blob_id, mode, known)
            staging.set(path, blob_id, repo.root / path)
    finally:
        known.close()
    for path in set(staging.paths()) | set(old_files):
        if path not in new_files:
            gone = repo.root / checked_path(path)
            if gone.is_symlink() or not gone.is_dir():  # a folder now stands there
                gone.unlink(missing_ok=True)
            _prune_empty_dirs(repo.root, path)
            staging.remove(path)
    staging.write()


def _clean(staging: Staging, root: Path, rel: str, blob_id: bytes) -> bool:
    """The index holds ``blob_id`` for ``rel`` and the file is as it was indexed (stat)."""
    current = staging.get(rel)
    return current is not None and current.blob_id == blob_id and staging.stat_matches(rel, root / rel)


def _old_model_chunks(
    repo: RepoCore, staging: Staging, old_files: TreeFiles, rels: list[str]
) -> WorktreeChunks:
    """The chunks of the clean model files about to be rewritten, read from the work tree
    instead of the store (see ``mvc.repo.materialize``)."""
    known = WorktreeChunks()
    for rel in rels:
        old = old_files.get(rel)
        if old is None or old[1] == 0o120000 or not is_model_path(rel):
            continue
        path = repo.root / rel
        if path.is_symlink() or not _clean(staging, repo.root, rel, old[0]):
            continue
        try:
            manifest = Manifest.from_bytes(repo.read_blob(old[0]), rel)
        except MvcError:
            continue  # only an optimisation: a bad old manifest is no source, not an error
        known.add_file(path, manifest)
    return known


def _refuse_if_dirty(repo: RepoCore, staging: Staging, old: TreeFiles, new: TreeFiles) -> None:
    current = status(repo)
    dirty = sorted(
        p
        for p in set(current.staged) | set(current.unstaged)
        if not _already_at_target(repo, staging, p, old, new)
    )
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise ConflictError(
            f"you have uncommitted changes that would be overwritten: {shown}",
            hint="commit them, or pass --force to discard them",
        )
    clobbered = [
        p
        for p in current.untracked
        if p in new and p not in old and not _already_at_target(repo, staging, p, old, new)
    ]
    if clobbered:
        raise ConflictError(
            f"untracked files would be overwritten: {', '.join(clobbered[:5])}",
            hint="move them away, or pass --force",
        )


def _already_at_target(
    repo: RepoCore, staging: Staging, rel: str, old: TreeFiles, new: TreeFiles
) -> bool:
    """True when `rel` already is what moving from `old` to `new` would make it.

    That is the state a move killed halfway leaves behind (work tree written, refs not
    yet moved): nothing would be lost by going on, so running the command again works.
    """
    entry = staging.get(rel)
    allowed = {old[rel][0] if rel in old else None, new[rel][0] if rel in new else None}
    if (entry.blob_id if entry else None) not in allowed:
        return False  # the index holds a third version: staged work we must not drop
    file_path = repo.root / rel
    if rel not in new:
        return not file_path.exists() and not file_path.is_symlink()
    if not file_path.exists() and not file_path.is_symlink():
        return False
    return content_blob_id(rel, file_path) == new[rel][0]


def _worktree_target(root: Path, rel: str) -> Path:
    """The work-tree path of `rel`, cleared for writing (no folder in the way, and no
    symlinked folder on the way that could lead outside the work tree)."""
    path = root / checked_path(rel)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    _unlink_leading_symlinks(root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _move_into_worktree(repo: RepoCore, rel: str, ready: Path) -> bool:
    """Rename a prewritten file into place; False when it cannot be (another filesystem)."""
    path = _worktree_target(repo.root, rel)
    try:
        os.replace(ready, path)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        return False
    os.chmod(path, 0o644)
    fsync_dir(path.parent)
    return True


def _write_worktree_file(
    repo: RepoCore, rel: str, blob_id: bytes, mode: int, known: WorktreeChunks | None = None
) -> None:
    path = _worktree_target(repo.root, rel)
    data = repo.read_blob(blob_id)
    if mode == 0o120000:
        path.unlink(missing_ok=True)
        os.symlink(data.decode(), path)
    elif is_model_path(rel):
        materialize(repo.store, Manifest.from_bytes(data, rel), path, known)
    else:
        atomic_write(path, data, mode=0o755 if mode & 0o111 else 0o644)


def _unlink_leading_symlinks(root: Path, rel: str) -> None:
    """Where `rel` needs a folder, a symlink (say, from the previous commit) must not stand.

    Writing through it would put the file wherever the link points, outside the work tree;
    as git does, the link is removed (never its target) and a real folder made instead.
    """
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        if current.is_symlink():
            current.unlink()


def _prune_empty_dirs(root: Path, rel: str) -> None:
    parent = (root / rel).parent
    while parent != root and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
