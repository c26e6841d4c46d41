"""`mvc blame`: where a merged tensor's elements came from, and who last changed it.

Shares come from the merge record: for a resolved tensor, the elements where a parent's
edit entered the merged value (`stats.contributed`) over the tensor's size; a tensor taken
whole from one parent is 100% that parent's. The commit that last changed the tensor on a
side is found by walking that parent's first-parent history while the tensor's chunk ids
stay the same. A tensor of a model folder is found by name in whichever shard holds it, so
`MODEL::TENSOR` names it by folder, and history across a reshard is one history. Only manifests are read (no tensor bytes, no torch).
"""

from __future__ import annotations

import stat
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dulwich.object_store import tree_lookup_path

from mvc.errors import MvcError, NotFoundError
from mvc.formats.hf import INDEX_NAME
from mvc.lineage.records import (
    commit_parents,
    find_merge_record,
    parent_label,
)
from mvc.repo.manifest import Manifest, TensorEntry
from mvc.repo.models import folder_of, model_folders, model_view
from mvc.repo.records import tree_blob
from mvc.repo.worktree import is_model_path

if TYPE_CHECKING:
    from mvc.repo import Repo


@dataclass
class SideBlame:
    index: int
    name: str
    commit: str
    share: float  # fraction of the tensor's elements taken from this parent
    contributed: int
    changed: int | None
    last_changed: str | None  # commit that last changed the tensor on this side
    last_message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BlameReport:
    commit: str
    path: str
    tensor: str
    action: str  # the merge's decision, or "commit" for a non-merge commit
    strategy: str | None
    numel: int
    conflicts: int | None
    sides: list[SideBlame] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def split_target(target: str) -> tuple[str, str]:
    """`FILE::TENSOR` or `MODEL::TENSOR` (a model folder) into its two parts."""
    path, sep, tensor = target.partition("::")
    path = path.rstrip("/")
    if not sep or not path or not tensor:
        raise MvcError(
            f"'{target}' does not name a tensor",
            hint="write FILE::TENSOR or MODEL::TENSOR, e.g. model.safetensors::w or model::w",
        )
    return path, tensor


def _folder_files(repo: Repo, sha: str, folder: str) -> dict[str, bytes] | None:
    """The files directly in `folder` at `sha` (path -> blob, read for shards and the index
    only), None when it is no folder."""
    tree_id = repo.git[sha.encode()].tree
    if folder:
        try:
            mode, tree_id = tree_lookup_path(
                repo.git.object_store.__getitem__, tree_id, folder.encode()
            )
        except KeyError:
            return None
        if not stat.S_ISDIR(mode):
            return None
    prefix = f"{folder}/" if folder else ""
    files = {}
    for item in repo.git[tree_id].items():
        if not stat.S_ISDIR(item.mode):
            name = item.path.decode()
            # The model view reads shards and the index; other files only need a name.
            wanted = is_model_path(name) or name == INDEX_NAME
            files[prefix + name] = repo.read_blob(item.sha) if wanted else b""
    return files


def find_tensor(repo: Repo, sha: str, path: str, tensor: str) -> tuple[str, TensorEntry] | None:
    """Where `tensor` is at `sha` (its file and entry), for `path` a file or a model folder.

    A tensor is its model's, not its file's: given a shard of a model folder, the tensor is
    found in whichever shard holds it at `sha` (a reshard moves it, it does not change it).
    """
    if is_model_path(path):
        blob = tree_blob(repo, sha, path)
        if blob is not None:
            entry = Manifest.from_bytes(blob, path).by_name().get(tensor)
            if entry is not None:
                return path, entry
        folder = folder_of(path)
        files = _folder_files(repo, sha, folder)
        if files is None or folder not in model_folders([files]):
            return None
    else:
        folder = path
        files = _folder_files(repo, sha, folder)
        if files is None:
            return None
    view = model_view(files, folder)
    entry = view.entry(tensor) if view is not None else None
    return None if entry is None or view is None else (view.where[tensor], entry)


def _chunk_ids(repo: Repo, sha: str, path: str, tensor: str) -> tuple[object, ...] | None:
    """The tensor's identity at `sha` (dtype, shape, chunk ids), None when it is absent."""
    found = find_tensor(repo, sha, path, tensor)
    return None if found is None else (found[1].dtype, found[1].shape, found[1].chunk_ids)


def _first_line(repo: Repo, sha: str) -> str:
    lines = repo.commit_info(sha).message.strip().splitlines()
    return lines[0] if lines else ""


def last_change(repo: Repo, sha: str, path: str, tensor: str) -> str:
    """The oldest commit on `sha`'s first-parent line that still has `sha`'s tensor."""
    current = _chunk_ids(repo, sha, path, tensor)
    while True:
        parents = commit_parents(repo, sha)
        if not parents or _chunk_ids(repo, parents[0], path, tensor) != current:
            return sha
        sha = parents[0]


def blame(repo: Repo, rev: str, target: str) -> BlameReport:
    """Blame tensor `target` (FILE::TENSOR or MODEL::TENSOR) of commit `rev`."""
    asked, tensor = split_target(target)
    sha = repo.resolve(rev)
    found = find_tensor(repo, sha, asked, tensor)
    if found is None:
        if tree_blob(repo, sha, asked) is None and _folder_files(repo, sha, asked) is None:
            raise NotFoundError(f"'{asked}' is not in {rev}")
        raise NotFoundError(f"'{asked}' at {rev} has no tensor '{tensor}'")
    path, entry = found
    numel = 1
    for dim in entry.shape:
        numel *= dim
    record = find_merge_record(repo, sha)
    if record is None:
        last = last_change(repo, sha, asked, tensor)
        side = SideBlame(0, rev, sha, 1.0, numel, None, last, _first_line(repo, last))
        return BlameReport(sha, path, tensor, "commit", None, numel, None, [side])
    file_entry = record["files"].get(path, {})
    item = file_entry.get("tensors", {}).get(tensor)
    if item is None:  # a file taken whole
        item = {k: v for k, v in file_entry.items() if k in ("action", "source")}
    action = item.get("action", "base")
    stats = item.get("stats") or {}
    branches = item.get("branches", [])
    report = BlameReport(
        sha, path, tensor, action, item.get("strategy"), numel, stats.get("conflicts")
    )
    for index, parent in enumerate(record["parents"]):
        if action == "resolve" and index in branches:
            position = branches.index(index)
            contributed = int(stats["contributed"][position])
            changed: int | None = int(stats["changed"][position])
        elif action in ("one-sided", "identical", "added") and item.get("source") == index:
            contributed, changed = numel, numel
        else:
            contributed, changed = 0, None
        last = None
        message = ""
        if _chunk_ids(repo, parent, asked, tensor) is not None:
            last = last_change(repo, parent, asked, tensor)
            message = _first_line(repo, last)
        report.sides.append(
            SideBlame(
                index,
                parent_label(record, index),
                parent,
                contributed / numel if numel else 0.0,
                contributed,
                changed,
                last,
                message,
            )
        )
    return report
