"""mvc.repo: the dulwich-backed repository (manifests, index, commits, refs, checkout)."""

from mvc.repo.manifest import Chunk, Manifest, TensorEntry
from mvc.repo.repository import BranchInfo, CommitInfo, Repo, Status

__all__ = ["Repo", "Status", "CommitInfo", "BranchInfo", "Manifest", "TensorEntry", "Chunk"]
