"""The bridge between torch state_dicts and manifests (imports torch lazily, via formats)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mvc.formats.dtypes import get_dtype
from mvc.formats.safetensors import build_header, plan_layout
from mvc.formats.torch_io import dtype_name, state_dict_specs, tensor_bytes, to_torch
from mvc.repo.manifest import Chunk, Manifest, TensorEntry
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
