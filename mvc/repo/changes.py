"""Staging: `add` and `rm` move work-tree changes into the index; `status` reports them.

A model file is ingested into the tensor store as it is staged (its chunks delta-encoded
against the version already staged, or against its sibling shards), and the index holds
its manifest. Stat data decides what needs reading at all, as in git.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dulwich.objects import Blob

from mvc.errors import FormatError, NotFoundError
from mvc.repo.core import RepoCore
from mvc.repo.ingest import ingest_file, manifest_ids_only
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.refs import current_branch, head
from mvc.repo.staging import Staging, store_blob
from mvc.repo.trees import tree_files
from mvc.repo.worktree import checked_path, is_model_path, relative_to_root


@dataclass
class Status:
    """Staged changes (index vs HEAD), unstaged changes (work tree vs index), untracked files."""

    branch: str | None
    head: str | None
    staged: dict[str, str] = field(default_factory=dict)
    unstaged: dict[str, str] = field(default_factory=dict)
    untracked: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.staged and not self.unstaged

    def to_json(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "head": self.head,
            "staged": self.staged,
            "unstaged": self.unstaged,
            "untracked": self.untracked,
        }


def add(repo: RepoCore, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Stage files (and deletions of tracked files that are gone) under `paths`."""
    rels = [relative_to_root(repo.root, p) for p in paths]
    with repo.locked():
        staging = Staging(repo.git)
        present, gone = repo.worktree.expand(rels, staging.paths())
        changed = stage(repo, staging, present)
        for rel in gone:
            staging.remove(rel)
        staging.write()
    return changed + gone


def stage(repo: RepoCore, staging: Staging, rels: list[str]) -> list[str]:
    """Store the files whose stat changed and point the index at them; the changed ones."""
    todo = [rel for rel in rels if not staging.stat_matches(rel, repo.root / rel)]
    _validate_model_headers(repo, todo)
    changed = []
    for rel in todo:
        file_path = repo.root / checked_path(rel)
        blob_id = _store_file(repo, staging, rel, file_path)
        previous = staging.get(rel)
        if previous is None or previous.blob_id != blob_id:
            changed.append(rel)
        staging.set(rel, blob_id, file_path)
    return changed


def _validate_model_headers(repo: RepoCore, rels: list[str]) -> None:
    """Refuse the whole add before anything is written if any model file is malformed."""
    from mvc.formats.safetensors import read_header

    for rel in rels:
        if is_model_path(rel):
            try:
                read_header(repo.root / rel)
            except FormatError as err:
                raise FormatError(f"{rel}: {err.message}", hint=err.hint) from None


def _store_file(repo: RepoCore, staging: Staging, rel: str, file_path: Path) -> bytes:
    if not is_model_path(rel):
        if file_path.is_symlink():
            return store_blob(repo.git, os.readlink(file_path).encode())
        return store_blob(repo.git, file_path.read_bytes())
    previous = _previous_tensors(repo, staging, rel)
    try:
        manifest = ingest_file(repo.store, file_path, previous)
    except FormatError as err:
        raise FormatError(f"{rel}: {err.message}", hint=err.hint) from None
    return store_blob(repo.git, manifest.to_bytes())


def _previous_tensors(repo: RepoCore, staging: Staging, rel: str) -> dict[str, TensorEntry]:
    """Delta bases for a model file: its staged version, else its folder's other shards."""
    staged = staging.get(rel)
    if staged is not None:
        try:
            return Manifest.from_bytes(repo.read_blob(staged.blob_id), rel).by_name()
        except (FormatError, KeyError):
            return {}
    folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
    merged: dict[str, TensorEntry] = {}
    for path in staging.paths():
        same_folder = (path.rsplit("/", 1)[0] if "/" in path else "") == folder
        if same_folder and is_model_path(path):
            entry = staging.get(path)
            if entry is not None:
                merged.update(Manifest.from_bytes(repo.read_blob(entry.blob_id), path).by_name())
    return merged


def rm(
    repo: RepoCore, paths: Iterable[str | os.PathLike[str]], cached: bool = False
) -> list[str]:
    """Unstage tracked files and (unless `cached`) delete them from the work tree."""
    rels = [relative_to_root(repo.root, p) for p in paths]
    with repo.locked():
        staging = Staging(repo.git)
        tracked = staging.paths()
        removed = []
        for rel in rels:
            prefix = f"{rel}/" if rel else ""
            matches = [t for t in tracked if t == rel or t.startswith(prefix)]
            if not matches:
                raise NotFoundError(f"pathspec '{rel}' did not match any tracked files")
            removed.extend(matches)
        for rel in removed:
            staging.remove(rel)
            if not cached:
                (repo.root / rel).unlink(missing_ok=True)
        staging.write()
    return sorted(set(removed))


def status(repo: RepoCore) -> Status:
    current = head(repo)
    result = Status(branch=current_branch(repo), head=current)
    head_files = tree_files(repo, current)
    staging = Staging(repo.git)
    staged_paths = staging.paths()
    for rel in staged_paths:
        entry = staging.get(rel)
        assert entry is not None
        if rel not in head_files:
            result.staged[rel] = "added"
        elif head_files[rel][0] != entry.blob_id:
            result.staged[rel] = "modified"
        state = _worktree_state(repo, staging, rel)
        if state:
            result.unstaged[rel] = state
    for rel in head_files:
        if staging.get(rel) is None:
            result.staged[rel] = "deleted"
    tracked = set(staged_paths)
    result.untracked = [rel for rel in repo.worktree.files() if rel not in tracked]
    return result


def _worktree_state(repo: RepoCore, staging: Staging, rel: str) -> str | None:
    """'deleted', 'modified' or None (clean) for a tracked file, hashing only on stat change."""
    file_path = repo.root / rel
    if not file_path.exists() and not file_path.is_symlink():
        return "deleted"
    if staging.stat_matches(rel, file_path):
        return None
    entry = staging.get(rel)
    assert entry is not None
    return None if content_blob_id(rel, file_path) == entry.blob_id else "modified"


def content_blob_id(rel: str, file_path: Path) -> bytes | None:
    """The blob id this file would get, computed without storing anything."""
    if is_model_path(rel):
        try:
            data = manifest_ids_only(file_path).to_bytes()
        except FormatError:
            return None
    elif file_path.is_symlink():
        data = os.readlink(file_path).encode()
    else:
        data = file_path.read_bytes()
    return Blob.from_string(data).id
