"""`mvc reshard`: commit the same model in another shard layout, storing no tensor.

A shard's manifest lists the store objects of its tensors' chunks, and those objects do not
know which file they sit in. So a new layout is new manifests (and a new index) pointing at
the very objects already stored: the commit adds a few kilobytes of git blobs, whatever
the model's size. The work tree then gets the new shard files, written from the store.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mvc.errors import ConflictError, CorruptObjectError, MvcError, NotFoundError
from mvc.repo import models
from mvc.repo.manifest import Manifest
from mvc.repo.worktree import is_model_path, relative_to_root

if TYPE_CHECKING:
    from mvc.repo.repository import Repo


@dataclass
class ReshardResult:
    commit: str
    folder: str
    shards: list[str]
    model_bytes: int  # the tensors' bytes (unchanged)
    bytes_added: int  # how much the git and tensor object folders grew
    objects_reused: int  # tensor objects the new manifests point at, all already stored


def reshard(
    repo: Repo, path: str | os.PathLike[str], max_shard_size: int, message: str | None = None
) -> ReshardResult:
    """Commit HEAD's model at `path` (a model folder, or one of its files) in shards of at
    most `max_shard_size` bytes, cut as ``save_pretrained(max_shard_size=...)`` cuts them."""
    rel = relative_to_root(repo.root, path)
    with repo.locked():
        head = repo.head()
        if head is None:
            raise MvcError("nothing to reshard on an empty branch", hint="commit the model first")
        files = repo.files(head)
        folder = models.folder_of(rel) if is_model_path(rel) else rel
        view = models.model_view(files, folder)
        if view is None or not view.shards:
            raise NotFoundError(f"'{rel or '.'}' holds no committed model at HEAD")
        if folder not in models.model_folders([files]) and len(view.shards) > 1:
            raise MvcError(
                f"'{folder or '.'}' has several safetensors files but no index or config.json",
                hint="a folder is one model when it holds model.safetensors.index.json or "
                "config.json",
            )
        if not repo.status().clean:
            raise ConflictError(
                "you have uncommitted changes", hint="commit them first (reshard commits)"
            )
        entries = view.entries()
        layout = models.sharded_layout(
            folder, [(n, e.nbytes) for n, e in entries.items()], max_shard_size
        )
        first = next(iter(view.shards.values()))
        new_files = models.realign(files, view, layout, {}, first.header.metadata)
        shards = {p: Manifest.from_bytes(new_files[p], p) for p, _ in layout.shards}
        if layout.index:
            new_files[models.index_path(folder)] = models.layout_index(
                folder, shards, view.index_raw
            )
        if new_files == files:
            raise MvcError(f"'{folder or '.'}' is already in this layout")
        missing = [
            oid for m in shards.values() for oid in m.object_ids() if not repo.store.has(oid)
        ]
        if missing:
            raise CorruptObjectError(f"object {missing[0]} of the model is missing from the store")
        before = _object_bytes(repo)
        text = message or f"Reshard {folder or '.'} (max shard size {max_shard_size} bytes)"
        sha = repo.commit_tree(new_files, [head], text)
        added = _object_bytes(repo) - before
    return ReshardResult(
        sha,
        folder,
        list(shards),
        sum(e.nbytes for e in entries.values()),
        added,
        len({oid for m in shards.values() for oid in m.object_ids()}),
    )


def _object_bytes(repo: Repo) -> int:
    """Bytes on disk of git's objects and the tensor store (what a commit can grow)."""
    total = 0
    for folder in (Path(repo.git.controldir()) / "objects", repo.store.objects):
        for dirpath, _, names in os.walk(folder):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
