"""The bridge between torch state_dicts and manifests (imports torch lazily, via formats).

`Repo.commit_state_dict` and `Repo.load_state_dict` import this module on first use, so
the fast commands never load the torch bridge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mvc.errors import MvcError
from mvc.formats.dtypes import get_dtype
from mvc.formats.safetensors import build_header, plan_layout
from mvc.formats.torch_io import dtype_name, state_dict_specs, tensor_bytes, to_torch
from mvc.repo.commits import commit_tree
from mvc.repo.core import RepoCore
from mvc.repo.manifest import Chunk, Manifest, TensorEntry
from mvc.repo.refs import head
from mvc.repo.trees import files, manifest
from mvc.repo.worktree import checked_path, is_model_path
from mvc.store import ObjectStore
from mvc.store.chunking import row_chunks


def manifest_from_state_dict(
    store: ObjectStore,
    state_dict: Mapping[str, Any],
    previous: Mapping[str, TensorEntry],
    metadata: Mapping[str, str] | None = None,
) -> Manifest:
    """Store every tensor of `state_dict` chunk by chunk and return the file's manifest."""
    specs = state_dict_specs(state_dict)
    header_raw = build_header(specs, dict(metadata) if metadata else None)
    entries = [
        store_tensor(store, info.name, state_dict[info.name], previous.get(info.name))
        for info in plan_layout(specs)
    ]
    return Manifest(header_raw=header_raw, tensors=tuple(entries))


def store_tensor(
    store: ObjectStore, name: str, tensor: Any, base_entry: TensorEntry | None = None
) -> TensorEntry:
    """Store one torch tensor chunk by chunk (each chunk a delta candidate against the same
    chunk of ``base_entry`` when the layout matches) and return its manifest entry."""
    dtype = dtype_name(tensor.dtype)
    data = memoryview(tensor_bytes(tensor))
    itemsize = get_dtype(dtype).itemsize
    shape = tuple(tensor.shape)
    row_bytes = itemsize
    for dim in shape[1:]:
        row_bytes *= dim
    chunks = []
    for index, (start, stop) in enumerate(row_chunks(shape, itemsize)):
        piece = data[start * row_bytes : stop * row_bytes] if shape else data
        chunk_shape = (stop - start, *shape[1:]) if shape else ()
        base = None
        if (
            base_entry is not None
            and base_entry.dtype == dtype
            and base_entry.shape == shape
            and index < len(base_entry.chunks)
        ):
            base = base_entry.chunks[index].oid
        chunks.append(Chunk(start, stop, store.put(piece, dtype, chunk_shape, base)))
    return TensorEntry(name, dtype, shape, len(data), tuple(chunks))


def load_tensor(store: ObjectStore, entry: TensorEntry) -> Any:
    """One stored tensor as a torch tensor (a copy it owns)."""
    data = bytearray(b"".join(store.get(chunk.oid) for chunk in entry.chunks))
    return to_torch(data, entry.dtype, entry.shape)


def state_dict_from_manifest(store: ObjectStore, manifest: Manifest) -> dict[str, Any]:
    """Load every tensor of a manifest into a torch tensor."""
    return {entry.name: load_tensor(store, entry) for entry in manifest.tensors}


def commit_state_dict(
    repo: RepoCore,
    state_dict: Mapping[str, Any],
    path: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Commit a torch state_dict as the model file `path` without writing it first."""
    rel = checked_path(path)
    if not is_model_path(rel):
        raise MvcError(f"'{path}' must end in .safetensors")
    with repo.locked():
        current = head(repo)
        tree: dict[str, Manifest | bytes] = dict(files(repo, current)) if current else {}
        previous = {}
        if rel in tree and isinstance(tree[rel], bytes):
            previous = Manifest.from_bytes(tree[rel], rel).by_name()
        tree[rel] = manifest_from_state_dict(repo.store, state_dict, previous, metadata)
        return commit_tree(repo, tree, [current] if current else [], message)


def load_state_dict(repo: RepoCore, rev: str, path: str) -> dict[str, Any]:
    """A model file of a commit as a dict of torch tensors."""
    return state_dict_from_manifest(repo.store, manifest(repo, rev, path))
