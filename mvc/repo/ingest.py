"""Moving model files between the work tree and the object store.

`ingest` turns a safetensors file into a manifest, storing each row chunk as an object
(delta-encoded against the same chunk of the previous version when there is one, also when
the tensor grew along dim 0), streaming chunk by chunk from a memory map, so memory stays
bounded by a few chunks whatever the model size. Writing a manifest back out as the
byte-identical file is `mvc.repo.materialize`; `iter_file_chunks` streams it in order
(the git smudge filter writes it to a pipe).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mvc.formats.dtypes import get_dtype
from mvc.formats.safetensors import Header, SafetensorsFile, TensorInfo
from mvc.memory import reuse_large_buffers
from mvc.repo.manifest import Chunk, Manifest, TensorEntry
from mvc.store import ObjectStore, PutRequest, object_id
from mvc.store.bases import grows_from
from mvc.store.chunking import DEFAULT_CHUNK_BYTES, row_chunks


def ingest_file(
    store: ObjectStore,
    path: Path,
    previous: Mapping[str, TensorEntry] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    header: Header | None = None,
) -> Manifest:
    """Store every chunk of a safetensors file and return its manifest.

    `previous` maps tensor names to their entries in the parent version; a chunk whose
    tensor kept its dtype and shape is offered to the store as a delta base. `header`,
    when the caller already validated the file's header, is not parsed again. The requests
    are zero-copy views of the memory map; `put_many` bounds how many are being compressed
    and written at once, and overlaps their fsyncs.
    """
    previous = previous or {}
    reuse_large_buffers(2 * chunk_bytes)  # decoded bases and encoded chunks, reused
    with SafetensorsFile(path, header) as sf:
        layout = []
        requests = []
        rows: list[tuple[str, int, int]] = []  # per request: the rows it reads
        for info in sf.header.tensors:
            ranges = _chunks_of(info, chunk_bytes)
            layout.append((info, ranges))
            for index, (start, stop) in enumerate(ranges):
                rows.append((info.name, start, stop))
                requests.append(
                    PutRequest(
                        _chunk_view(sf, info, start, stop),
                        info.dtype,
                        _chunk_shape(info, start, stop),
                        _delta_base(previous.get(info.name), info, index, start, stop),
                    )
                )
        ids = iter(store.put_many(requests, done_reading=lambda i: sf.done_with_rows(*rows[i])))
        tensors = tuple(
            TensorEntry(
                name=info.name,
                dtype=info.dtype,
                shape=tuple(info.shape),
                nbytes=info.nbytes,
                chunks=tuple(Chunk(start, stop, next(ids)) for start, stop in ranges),
            )
            for info, ranges in layout
        )
        return Manifest(header_raw=sf.header.raw, tensors=tensors)


def manifest_ids_only(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Manifest:
    """The manifest a file would get, hashing without storing (for status and diff)."""
    with SafetensorsFile(path) as sf:
        tensors = []
        for info in sf.header.tensors:
            chunks = []
            for start, stop in _chunks_of(info, chunk_bytes):
                data = _chunk_view(sf, info, start, stop)
                oid = object_id(info.dtype, _chunk_shape(info, start, stop), data)
                sf.done_with_rows(info.name, start, stop)
                chunks.append(Chunk(start, stop, oid))
            tensors.append(
                TensorEntry(info.name, info.dtype, tuple(info.shape), info.nbytes, tuple(chunks))
            )
        return Manifest(header_raw=sf.header.raw, tensors=tuple(tensors))


def iter_entry_bytes(store: ObjectStore, entry: TensorEntry) -> Iterator[bytes]:
    """A tensor's raw bytes, chunk by chunk, each verified against its id by the store."""
    for chunk in entry.chunks:
        yield store.get(chunk.oid)


def iter_file_chunks(store: ObjectStore, manifest: Manifest) -> Iterator[memoryview]:
    """The file's data, chunk by chunk; the next chunk decodes on a thread meanwhile."""
    oids = list(manifest.object_ids())
    if not oids:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(store.get_view, oids[0])
        for next_oid in oids[1:]:
            current = upcoming.result()
            upcoming = pool.submit(store.get_view, next_oid)
            yield current
        yield upcoming.result()


def _chunks_of(info: TensorInfo, chunk_bytes: int) -> list[tuple[int, int]]:
    return row_chunks(tuple(info.shape), get_dtype(info.dtype).itemsize, chunk_bytes)


def _chunk_shape(info: TensorInfo, start: int, stop: int) -> tuple[int, ...]:
    if not info.shape:
        return ()
    return (stop - start, *info.shape[1:])


def _chunk_view(sf: SafetensorsFile, info: TensorInfo, start: int, stop: int) -> memoryview:
    if not info.shape:
        return sf.tensor(info.name)
    return sf.rows(info.name, start, stop)


def _delta_base(
    base_entry: TensorEntry | None, info: TensorInfo, index: int, start: int, stop: int
) -> str | None:
    """The parent's chunk ``index`` when it holds these rows, or their first rows (a tensor
    that grew along dim 0: its old rows delta on the parent's, appended rows cost what they
    cost plainly; chunks wholly past the parent's rows have no base)."""
    if base_entry is None or base_entry.dtype != info.dtype or index >= len(base_entry.chunks):
        return None
    if not grows_from(base_entry.shape, info.shape):
        return None
    chunk = base_entry.chunks[index]
    if base_entry.shape == tuple(info.shape):
        return chunk.oid if (chunk.start, chunk.stop) == (start, stop) else None
    return chunk.oid if chunk.start == start and chunk.stop <= stop else None
