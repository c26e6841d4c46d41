"""Staging: `add` and `rm` move work-tree changes into the index; `status` reports them.

A model file is ingested into the tensor store as it is staged (its chunks delta-encoded
against the version already staged, or against its sibling shards), and the index holds
its manifest. Stat data decides what needs reading at all, as in git.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dulwich.objects import Blob

from mvc.errors import FormatError, NotFoundError
from mvc.formats.safetensors import Header, read_header
from mvc.repo.core import RepoCore
from mvc.repo.ingest import ingest_file, manifest_ids_only
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.models import check_folders_on_disk
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
        return asdict(self)


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
    """Store the files whose stat changed and point the index at them; the changed ones.

    Every model header is read (and validated) once, up front, so a malformed file
    refuses the whole add before anything is written; ingesting reuses it.
    """
    todo = [rel for rel in rels if not staging.stat_matches(rel, repo.root / rel)]
    headers = _model_headers(repo, todo)
    check_folders_on_disk(repo.root, todo)  # a model folder must be one unambiguous model
    bases = _DeltaBases(repo, staging)
    changed = []
    for rel in todo:
        file_path = repo.root / checked_path(rel)
        if rel in headers:
            manifest = _ingest(repo, rel, file_path, bases.of(rel), headers[rel])
            bases.staged(rel, manifest)
            blob_id = store_blob(repo.git, manifest.to_bytes())
        elif file_path.is_symlink():
            blob_id = store_blob(repo.git, os.readlink(file_path).encode())
        else:
            blob_id = store_blob(repo.git, file_path.read_bytes())
        previous = staging.get(rel)
        if previous is None or previous.blob_id != blob_id:
            changed.append(rel)
        staging.set(rel, blob_id, file_path)
    return changed


def _model_headers(repo: RepoCore, rels: list[str]) -> dict[str, Header]:
    """The validated header of every model file among `rels`; the first bad one refuses."""
    headers = {}
    for rel in rels:
        if is_model_path(rel):
            try:
                headers[rel] = read_header(repo.root / rel)
            except FormatError as err:
                raise FormatError(f"{rel}: {err.message}", hint=err.hint) from None
    return headers


def _ingest(
    repo: RepoCore,
    rel: str,
    file_path: Path,
    previous: Mapping[str, TensorEntry],
    header: Header,
) -> Manifest:
    try:
        return ingest_file(repo.store, file_path, previous, header=header)
    except FormatError as err:
        raise FormatError(f"{rel}: {err.message}", hint=err.hint) from None


class _DeltaBases:
    """Delta bases for the model files of one add: a file's staged version, else the
    tensors of the other shards in its folder.

    A folder's shards are read from the index once, when its first new file needs them,
    and each file stored afterwards joins them, so adding n shards reads O(n) manifests
    rather than every sibling again for every shard.
    """

    def __init__(self, repo: RepoCore, staging: Staging) -> None:
        self._repo = repo
        self._staging = staging
        self._folders: dict[str, dict[str, TensorEntry]] = {}

    def of(self, rel: str) -> Mapping[str, TensorEntry]:
        staged = self._staging.get(rel)
        if staged is not None:
            try:
                return Manifest.from_bytes(self._repo.read_blob(staged.blob_id), rel).by_name()
            except (FormatError, KeyError):
                return {}
        folder = _folder(rel)
        if folder not in self._folders:
            merged: dict[str, TensorEntry] = {}
            for path in self._staging.paths():
                entry = self._staging.get(path)
                if entry is not None and is_model_path(path) and _folder(path) == folder:
                    blob = self._repo.read_blob(entry.blob_id)
                    merged.update(Manifest.from_bytes(blob, path).by_name())
            self._folders[folder] = merged
        return self._folders[folder]

    def staged(self, rel: str, manifest: Manifest) -> None:
        """`rel` now holds `manifest`: later new files of its folder may delta against it."""
        if _folder(rel) in self._folders:
            self._folders[_folder(rel)].update(manifest.by_name())


def _folder(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


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
