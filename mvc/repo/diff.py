"""`mvc diff`: per-tensor differences between two versions of a model.

For every tensor present on both sides with the same dtype and shape: the fraction of
elements whose bits changed and the relative L2 norm of the change. When the two sides
share a merge base distinct from both, also the cosine between the two task vectors
(each side minus the base) and the fraction of sign conflicts among elements both moved:
exactly the numbers that predict how a merge of the two will behave. Streams chunk by chunk
with numpy; never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mvc.formats.dtypes import get_dtype
from mvc.formats.hf import INDEX_NAME
from mvc.formats.numeric import to_float64
from mvc.formats.safetensors import SafetensorsFile
from mvc.repo.diff_stats import ChangeStats, TensorDiff
from mvc.repo.manifest import TensorEntry
from mvc.repo.models import folder_of, model_folders, model_view
from mvc.repo.worktree import is_model_path

if TYPE_CHECKING:
    from mvc.repo.repository import Repo


@dataclass
class DiffReport:
    old: str
    new: str
    base: str | None
    files: dict[str, str] = field(default_factory=dict)
    tensors: list[TensorDiff] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_Tensors = dict[str, tuple[str, TensorEntry]]  # name -> (file holding it, entry)


class _Side:
    """Chunks of one version's tensors: from the store (a commit) or from files on disk."""

    def __init__(self, repo: Repo, rev: str | None) -> None:
        self.repo = repo
        self.rev = rev
        self.indexes: dict[str, bytes] = {}  # index files, which the model view reads
        if rev is not None:
            self.manifests = repo.model_files(rev)
            self.blobs = {p: b for p, (b, _) in repo.tree_files(rev).items()}
            for path, blob in self.blobs.items():
                if path.endswith(INDEX_NAME):
                    self.indexes[path] = repo.read_blob(blob)
        else:
            self.manifests = {}
            self.blobs = {}
            status = repo.status()
            tracked = set(repo.tree_files(repo.head()) if repo.head() else {}) | set(status.staged)
            for path in sorted(tracked):
                file_path = repo.root / path
                if file_path.exists():
                    self.blobs[path] = b"worktree"
                    if is_model_path(path):
                        from mvc.repo.ingest import manifest_ids_only

                        self.manifests[path] = manifest_ids_only(file_path)
                    elif path.endswith(INDEX_NAME):
                        self.indexes[path] = file_path.read_bytes()

    def tensors(self, kind: str, where: str) -> _Tensors:
        """The tensors of a model folder (by name, wherever its shards put them) or a file."""
        if kind == "file":
            manifest = self.manifests.get(where)
            return {} if manifest is None else {e.name: (where, e) for e in manifest.tensors}
        files: dict[str, bytes] = {p: b"" for p in self.manifests}
        files.update(self.indexes)
        view = model_view(files, where, self.manifests)
        if view is None:
            return {}
        return {name: (path, view.shards[path].tensor(name)) for name, path in view.where.items()}

    def read(self, path: str) -> bytes | None:
        """An ordinary file of this version (None when absent)."""
        if path not in self.blobs:
            return None
        if self.rev is None:
            return (self.repo.root / path).read_bytes()
        return self.repo.read_blob(self.blobs[path])

    def chunks(self, path: str, entry: TensorEntry) -> Iterator[bytes]:
        if self.rev is not None:
            yield from self.repo.iter_chunks(entry)
            return
        with SafetensorsFile(self.repo.root / path) as sf:
            for chunk in entry.chunks:
                if entry.shape:
                    yield bytes(sf.rows(entry.name, chunk.start, chunk.stop))
                else:
                    yield bytes(sf.tensor(entry.name))


def diff_revisions(repo: Repo, old: str, new: str | None) -> DiffReport:
    """Compare commit `old` with commit `new`, or with the work tree when `new` is None.

    Tensors of a model folder (see ``mvc.repo.models``) are matched by name across its
    shards, so a resharded model shows its tensors' changes, not files added and deleted.
    A PEFT LoRA adapter's modules are compared by their update ΔW, not their factors
    (``mvc.repo.adapter_diff``).
    """
    old_id = repo.resolve(old)
    new_id = repo.resolve(new) if new is not None else None
    base = None
    if new_id is not None:
        bases = repo.merge_base([old_id, new_id])
        if len(bases) == 1 and bases[0] not in (old_id, new_id):
            base = bases[0]
    report = DiffReport(old=old_id, new=new_id or "worktree", base=base)
    a, b = _Side(repo, old_id), _Side(repo, new_id)
    base_side = _Side(repo, base) if base else None
    folders = model_folders([a.blobs, b.blobs])
    for path in sorted(set(a.blobs) | set(b.blobs)):
        if path not in a.blobs:
            report.files[path] = "added"
        elif path not in b.blobs:
            report.files[path] = "deleted"
        elif new_id is not None and a.blobs[path] != b.blobs[path]:
            report.files[path] = "modified"
    units = [("model", f) for f in sorted(folders)] + [
        ("file", p)
        for p in sorted(set(a.manifests) | set(b.manifests))
        if folder_of(p) not in folders
    ]
    for kind, where in units:
        old_t, new_t = a.tensors(kind, where), b.tensors(kind, where)
        base_t = base_side.tensors(kind, where) if base_side is not None else {}
        start = len(report.tensors)
        if kind == "file":
            from mvc.repo.adapter_diff import diff_adapter

            old_t, new_t, base_t = diff_adapter(
                report, where, a, b, base_side, old_t, new_t, base_t
            )
        _diff_tensors(report, old_t, new_t, base_t, a, b, base_side)
        if new_id is None:
            for t in report.tensors[start:]:
                if t.status != "unchanged":
                    report.files.setdefault(t.path, "modified")
    return report


def _diff_tensors(
    report: DiffReport,
    old_t: _Tensors,
    new_t: _Tensors,
    base_t: _Tensors,
    a: _Side,
    b: _Side,
    base: _Side | None,
) -> None:
    for name in list(old_t) + [n for n in new_t if n not in old_t]:
        if name not in new_t:
            report.tensors.append(TensorDiff(old_t[name][0], name, "deleted"))
            continue
        path, new_entry = new_t[name]
        if name not in old_t:
            report.tensors.append(TensorDiff(path, name, "added"))
            continue
        old_path, old_entry = old_t[name]
        if old_entry.chunk_ids == new_entry.chunk_ids:
            report.tensors.append(TensorDiff(path, name, "unchanged", 0.0, 0.0))
        elif not old_entry.same_layout(new_entry):
            report.tensors.append(TensorDiff(path, name, "retyped"))
        else:
            base_path, b_entry = base_t.get(name, (None, None))
            use_base = base is not None and b_entry is not None and b_entry.same_layout(old_entry)
            base_chunks = base.chunks(base_path, b_entry) if use_base and base and b_entry else None
            report.tensors.append(
                _stats(
                    path,
                    name,
                    a.chunks(old_path, old_entry),
                    b.chunks(path, new_entry),
                    base_chunks,
                    old_entry,
                    new_entry,
                )
            )


def _stats(
    path: str,
    name: str,
    old_chunks: Iterator[bytes],
    new_chunks: Iterator[bytes],
    base_chunks: Iterator[bytes] | None,
    old: TensorEntry,
    new: TensorEntry,
) -> TensorDiff:
    acc = ChangeStats(with_base=base_chunks is not None)
    for old_bytes, new_bytes in zip(old_chunks, new_chunks, strict=True):
        x = to_float64(old_bytes, old.dtype)
        y = to_float64(new_bytes, new.dtype)
        z = to_float64(next(base_chunks), old.dtype) if base_chunks is not None else None
        changed = int(np.count_nonzero(_bits(old_bytes, old) != _bits(new_bytes, old)))
        acc.add(x, y, z, changed)
    return acc.result(path, name)


def _bits(data: bytes, entry: TensorEntry) -> np.ndarray:
    """Elements as unsigned integers of their width: equal bits, equal element."""
    return np.frombuffer(data, dtype=get_dtype(entry.dtype).uint)
