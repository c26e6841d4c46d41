"""Reading what a commit holds: its files, their blobs, and the manifests of its models."""

from __future__ import annotations

from collections.abc import Iterator

from dulwich.object_store import iter_tree_contents

from mvc.errors import MvcError, NotFoundError
from mvc.repo.core import RepoCore
from mvc.repo.ingest import iter_entry_bytes
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.refs import resolve
from mvc.repo.worktree import is_model_path

TreeFiles = dict[str, tuple[bytes, int]]


def tree_files(repo: RepoCore, rev: str | None) -> TreeFiles:
    """path -> (blob id, mode) for every file in a commit (empty for None)."""
    if rev is None:
        return {}
    commit = repo.git[resolve(repo, rev).encode()]
    return {
        entry.path.decode(): (entry.sha, entry.mode)
        for entry in iter_tree_contents(repo.git.object_store, commit.tree)
    }


def files(repo: RepoCore, rev: str) -> dict[str, bytes]:
    """Every file of a commit as stored in git (manifests for model files)."""
    return {path: repo.read_blob(blob) for path, (blob, _) in tree_files(repo, rev).items()}


def model_files(repo: RepoCore, rev: str) -> dict[str, Manifest]:
    """The manifests of a commit's model files, by path."""
    return {
        path: Manifest.from_bytes(repo.read_blob(blob), path)
        for path, (blob, _) in tree_files(repo, rev).items()
        if is_model_path(path)
    }


def manifest(repo: RepoCore, rev: str, path: str) -> Manifest:
    blob_id = _blob_id(repo, rev, path)
    if not is_model_path(path):
        raise MvcError(f"'{path}' is not a model file")
    return Manifest.from_bytes(repo.read_blob(blob_id), path)


def read_file(repo: RepoCore, rev: str, path: str) -> bytes:
    """An ordinary file's bytes at `rev`."""
    return repo.read_blob(_blob_id(repo, rev, path))


def _blob_id(repo: RepoCore, rev: str, path: str) -> bytes:
    found = tree_files(repo, rev)
    if path not in found:
        raise NotFoundError(f"'{path}' is not in {rev}")
    return found[path][0]


def iter_chunks(repo: RepoCore, entry: TensorEntry) -> Iterator[bytes]:
    return iter_entry_bytes(repo.store, entry)


def tensor_bytes(repo: RepoCore, entry: TensorEntry) -> bytes:
    """A whole tensor's bytes (for callers that need one tensor at a time)."""
    return b"".join(iter_chunks(repo, entry))
