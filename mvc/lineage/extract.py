"""`mvc extract`: rebuild one parent's model from the merge and its stored TALL masks.

For a tensor the merge resolved by arithmetic, θ̂ = θ_base + m ⊙ τ_merged with
τ_merged = θ_merged − θ_base, which is `where(m, θ_merged, θ_base)` element by element (no
rounding of its own). A tensor the plan took from this parent is that parent's exactly; a
tensor this parent did not change is the base's. An `identical` tensor (several parents
made the same edit) is taken as merged: the record names only the first of them.

The result is written as model files under a folder, with the merge commit's ordinary files,
or committed as a branch whose parent is the merge. When the parent's own weights are
still stored, the relative L2 error of the reconstruction is measured against them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mvc.errors import MvcError
from mvc.formats.safetensors import build_header, plan_layout, write_safetensors
from mvc.lineage.records import merge_parent, parent_entry, parent_label, with_provenance
from mvc.lineage.tensors import as_float64, chunk_shape, iter_rows, load, mask_slice, row_numel
from mvc.merge.layout import LayoutChoice, align
from mvc.repo.manifest import Chunk, Manifest, TensorEntry
from mvc.repo.records import without_records
from mvc.repo.worktree import checked_path, is_model_path

if TYPE_CHECKING:
    from mvc.repo import Repo

TAKEN_FROM_PARENT = ("one-sided", "added")


@dataclass
class ExtractResult:
    merge: str
    parent: int
    parent_name: str
    parent_commit: str
    out_dir: Path | None
    commit: str | None
    files: list[str] = field(default_factory=list)
    exact: int = 0  # tensors taken whole (from the parent, the merge or the base)
    reconstructed: int = 0  # tensors rebuilt from masks
    relative_l2: float | None = None  # over every float tensor, when the parent is stored
    tensor_errors: dict[str, float] = field(default_factory=dict)  # reconstructed tensors

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "out_dir": str(self.out_dir) if self.out_dir else None}


@dataclass
class _Plan:
    """One output tensor: an existing entry to copy, or a reconstruction from a mask."""

    entry: TensorEntry  # what to copy, or the merged entry to reconstruct from
    base: TensorEntry | None = None
    mask_id: str | None = None
    mask_row: int = 0  # the parent's row in a mask object holding every branch's mask


class _Errors:
    """Σ(θ̂ − θ_p)² and Σθ_p² in float64, overall and per tensor."""

    def __init__(self) -> None:
        self.num = 0.0
        self.den = 0.0
        self.tensor_num = 0.0
        self.tensor_den = 0.0

    def add(self, rebuilt: np.ndarray, parent: np.ndarray, dtype: str) -> None:
        a, b = as_float64(rebuilt, dtype), as_float64(parent, dtype)
        self.tensor_num += float(((a - b) ** 2).sum())
        self.tensor_den += float((b**2).sum())

    def close_tensor(self) -> float:
        value = math.sqrt(self.tensor_num / self.tensor_den) if self.tensor_den else 0.0
        self.num += self.tensor_num
        self.den += self.tensor_den
        self.tensor_num = self.tensor_den = 0.0
        return value

    @property
    def overall(self) -> float:
        return math.sqrt(self.num / self.den) if self.den else 0.0


def extract(
    repo: Repo,
    rev: str,
    parent: str,
    out_dir: str | Path | None = None,
    branch: str | None = None,
    compare: bool = True,
) -> ExtractResult:
    """Rebuild parent `parent` of merge `rev` into `out_dir` and/or a new branch `branch`.

    With neither, the folder is `extract-<parent>` (in the current directory).
    """
    if out_dir is None and branch is None:
        out_dir = f"extract-{parent}"
    sha, record, index = merge_parent(repo, rev, parent)
    result = ExtractResult(
        sha, index, parent_label(record, index), record["parents"][index], None, None
    )
    target = Path(out_dir) if out_dir is not None else None
    if target is not None:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise MvcError(f"{target} exists and is not an empty folder", hint="choose another -o")
        result.out_dir = target
    merged = without_records(repo.files(sha))
    base_files, parent_files = repo.files(record["base"]), repo.files(result.parent_commit)
    if record.get("layout"):  # the merge rewrote shards: see base and parent in its layout
        aligned = align(base_files, [parent_files], merged, LayoutChoice(sha))
        base_files, parent_files = aligned.base_files, aligned.branch_files[0]
    plans = _plan(merged, base_files, record, index)
    parent_models = _stored_parent(repo, parent_files) if compare else None
    errors = _Errors()
    files: dict[str, Manifest | bytes] = {}
    for path, item in plans.items():
        result.files.append(path)
        if isinstance(item, bytes):
            files[path] = item
            if target is not None:
                out = target / checked_path(path)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(item)
            continue
        header_raw, tensors = item
        theirs = parent_models.get(path) if parent_models is not None else None
        entries: list[TensorEntry] = []
        chunks = _file_chunks(repo, tensors, theirs, errors, result, entries, branch is not None)
        if target is not None:
            out = target / checked_path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_safetensors(out, header_raw, chunks)
        else:
            for _ in chunks:
                pass
        files[path] = Manifest(header_raw, tuple(entries))
    if parent_models is not None:
        result.relative_l2 = errors.overall
    if branch is not None:
        result.commit = _commit(repo, files, sha, record, index, branch)
    return result


def _stored_parent(repo: Repo, files: Mapping[str, bytes]) -> dict[str, Manifest] | None:
    """The parent's manifests when every object they need is still in the store."""
    models = {p: Manifest.from_bytes(b, p) for p, b in files.items() if is_model_path(p)}
    if all(repo.store.has(oid) for m in models.values() for oid in m.object_ids()):
        return models
    return None


def _plan(
    merged: Mapping[str, bytes], base: Mapping[str, bytes], record: Mapping[str, Any], index: int
) -> dict[str, bytes | tuple[bytes, list[_Plan]]]:
    """Per output file: its bytes, or its header and the plan of each tensor in data order."""
    recorded: Mapping[str, Any] = record["files"]
    out: dict[str, bytes | tuple[bytes, list[_Plan]]] = {}
    for path, data in sorted(merged.items()):
        entry = recorded.get(path, {"action": "base"})
        action = entry["action"]
        if action != "merged":
            mine = action in ("base", "identical") or entry.get("source") == index
            chosen = data if mine else base.get(path)
            if chosen is None:
                continue  # added by another parent: not part of this one's model
            if is_model_path(path):
                manifest = Manifest.from_bytes(chosen, path)
                out[path] = (manifest.header_raw, [_Plan(t) for t in manifest.tensors])
            else:
                out[path] = chosen
            continue
        manifest = Manifest.from_bytes(data, path)
        base_tensors = Manifest.from_bytes(base[path], path).by_name() if path in base else {}
        out[path] = _plan_tensors(manifest, base_tensors, entry.get("tensors", {}), index, path)
    return out


def _plan_tensors(
    manifest: Manifest,
    base: Mapping[str, TensorEntry],
    decisions: Mapping[str, Any],
    index: int,
    path: str,
) -> tuple[bytes, list[_Plan]]:
    plans: list[_Plan] = []
    for tensor in manifest.tensors:
        item = decisions.get(tensor.name, {"action": "base"})
        action = item["action"]
        if action == "resolve":
            branches = item.get("branches", [])
            if index not in branches:
                plans.append(_Plan(base[tensor.name]))
                continue
            if item.get("appended") is not None:
                raise MvcError(
                    f"cannot extract {path}::{tensor.name}: a parent appended rows to it, and "
                    "its masks cover only the rows the base has",
                    hint="check out that parent's commit instead, or unmerge the merge",
                )
            masks = item.get("masks")
            if not masks:
                raise MvcError(
                    f"the merge kept no TALL mask for {path}::{tensor.name}",
                    hint="it was merged with --no-masks; extract needs the masks",
                )
            position = branches.index(index)
            if isinstance(masks, str):  # one object, a row per entering branch
                plans.append(_Plan(tensor, base[tensor.name], masks, position))
            else:  # records written before masks were packed: an object per branch
                plans.append(_Plan(tensor, base[tensor.name], masks[position]))
        elif action in TAKEN_FROM_PARENT and item.get("source") != index:
            if tensor.name in base:
                plans.append(_Plan(base[tensor.name]))
        else:
            plans.append(_Plan(tensor))
    if len(plans) == len(manifest.tensors):
        return manifest.header_raw, plans
    specs = [(p.entry.name, p.entry.dtype, p.entry.shape) for p in plans]
    by_name = {p.entry.name: p for p in plans}
    header = build_header(specs, manifest.header.metadata)
    return header, [by_name[info.name] for info in plan_layout(specs)]


def _file_chunks(
    repo: Repo,
    plans: list[_Plan],
    parent: Manifest | None,
    errors: _Errors,
    result: ExtractResult,
    entries: list[TensorEntry],
    store: bool,
) -> Iterator[bytes]:
    """The file's data bytes chunk by chunk; fills `entries` (storing chunks when `store`)."""
    theirs = parent.by_name() if parent is not None else {}
    for plan in plans:
        name = plan.entry.name
        reference = theirs.get(name)
        if reference is not None and reference.shape != plan.entry.shape:
            reference = None
        ref_rows = iter_rows(repo.store, reference) if reference is not None else None
        floats = plan.entry.dtype.startswith(("F", "BF"))
        chunks = []
        if plan.mask_id is None:
            result.exact += 1
            chunks = list(plan.entry.chunks)
            for chunk in plan.entry.chunks:
                data = repo.store.get(chunk.oid)
                if ref_rows is not None and floats:
                    shape = chunk_shape(plan.entry, chunk.start, chunk.stop)
                    ours = load(data, plan.entry.dtype, shape)
                    _compare_rows(errors, ours, ref_rows, plan.entry.dtype)
                yield data
        else:
            result.reconstructed += 1
            assert plan.base is not None
            row_bytes = (math.prod(plan.entry.shape) + 7) // 8
            mask = repo.store.get(plan.mask_id)
            mask = mask[plan.mask_row * row_bytes : (plan.mask_row + 1) * row_bytes]
            width = row_numel(plan.entry)
            pairs = zip(
                iter_rows(repo.store, plan.entry), iter_rows(repo.store, plan.base), strict=True
            )
            for (start, stop, merged), (_, _, base) in pairs:
                keep = mask_slice(mask, start * width, (stop - start) * width)
                rebuilt = np.where(keep.reshape(merged.shape), merged, base)
                data = rebuilt.tobytes()
                if store:
                    oid = repo.store.put(
                        data, plan.entry.dtype, chunk_shape(plan.entry, start, stop)
                    )
                    chunks.append(Chunk(start, stop, oid))
                if ref_rows is not None:
                    _compare_rows(errors, rebuilt, ref_rows, plan.entry.dtype)
                yield data
        error = errors.close_tensor()
        if plan.mask_id is not None and reference is not None:
            result.tensor_errors[name] = error
        entry = plan.entry
        entries.append(
            TensorEntry(entry.name, entry.dtype, entry.shape, entry.nbytes, tuple(chunks))
        )


def _compare_rows(
    errors: _Errors,
    ours: np.ndarray,
    ref_rows: Iterator[tuple[int, int, np.ndarray]],
    dtype: str,
) -> None:
    """Compare `ours` with the parent's next rows (layouts of one shape chunk the same way)."""
    _, _, theirs = next(ref_rows)
    if theirs.shape == ours.shape:
        errors.add(ours, theirs, dtype)


def _commit(
    repo: Repo,
    files: dict[str, Manifest | bytes],
    sha: str,
    record: Mapping[str, Any],
    index: int,
    branch: str,
) -> str:
    """Commit the extracted model as branch `branch`, child of the merge, with provenance."""
    files = with_provenance(
        files, "extract", sha, parent=parent_entry(record, index), store_objects=[]
    )
    message = f"Extract {parent_label(record, index)} from {sha[:12]}"
    commit = repo.commit_tree(files, [sha], message, update_ref=False, update_worktree=False)
    repo.create_branch(branch, commit)
    return commit
