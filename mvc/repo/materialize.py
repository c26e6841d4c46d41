"""Writing model files from their chunk ids: the one primitive of checkout and of a clone.

A model file is rebuilt from its manifest by decoding every chunk object and putting its
bytes at their offset. ``fill`` does that on ``mvc.tuning.threads()`` workers, one object
per worker (zstd, numpy and xxhash release the GIL), each writing its chunk straight to
its place in the output file with ``os.pwrite`` (``RowWriter``): no second copy of the
file in memory, no ordering between chunks, and at most one decoded chunk per worker held
at a time. ``materialize`` wraps it for one file written all or nothing (a temp name
beside the file, fsync, rename, as ``mvc.files`` does every durable write); a clone's
direct checkout (``mvc.remote.direct_checkout``) fills the chunks that did not arrive
with the same ``fill``.

A checkout replaces files the work tree already holds, and those old bytes are in the
page cache. ``WorktreeChunks`` serves them as known bytes: a chunk that did not change is
copied from the old file (after checking its id, a hash, cheaper than a decode), and a
fine-tune's delta chunk is applied on its base's old bytes instead of decoding the base
from the store. The delta's result is verified against its id as always, so old bytes
that are not what the index says (a file changed behind its stat) cannot go unnoticed:
that chunk is then decoded from the store alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mvc.errors import CorruptObjectError, FormatError
from mvc.files import publish, temp_path
from mvc.formats.safetensors import RowWriter, SafetensorsFile
from mvc.memory import reuse_large_buffers
from mvc.repo.manifest import Chunk, Manifest, TensorEntry
from mvc.store import ObjectStore, object_id
from mvc.store.chunking import DEFAULT_CHUNK_BYTES
from mvc.tuning import threads

#: Where an object's bytes go: the file being filled, the tensor, and its first row there.
Placement = tuple[RowWriter, str, int]


class WorktreeChunks(Mapping[str, memoryview]):
    """Chunk bytes of work-tree files a checkout is about to replace, by object id.

    Each file is mapped read-only before anything is written and stays mapped until
    ``close``, so its old inode lives on after the checkout renames a new file over it.
    Only files whose header is the manifest's are used; the caller passes only files the
    index says are clean (stat cache), and ``verified``/the delta's id check cover the rest.
    """

    def __init__(self) -> None:
        self._files: list[SafetensorsFile] = []
        self._where: dict[str, tuple[SafetensorsFile, TensorEntry, Chunk]] = {}
        self._verified: set[str] = set()
        self._touched = threading.local()

    def add_file(self, path: Path, manifest: Manifest) -> None:
        """Offer the chunks of ``path``, a clean work-tree copy of ``manifest``."""
        try:
            sf = SafetensorsFile(path, manifest.header)
        except (OSError, FormatError):
            return  # gone or unreadable: simply not a source
        if sf.header.raw != manifest.header_raw:
            sf.close()
            return
        self._files.append(sf)
        for entry in manifest.tensors:
            for chunk in entry.chunks:
                self._where.setdefault(chunk.oid, (sf, entry, chunk))

    def verified(self, oid: str) -> memoryview | None:
        """The old bytes of ``oid`` if the work tree holds them and they hash to ``oid``."""
        if oid not in self._where:
            return None
        view = self[oid]
        if oid not in self._verified:
            _, entry, chunk = self._where[oid]
            shape = (chunk.stop - chunk.start, *entry.shape[1:]) if entry.shape else ()
            if object_id(entry.dtype, shape, view) != oid:
                del self._where[oid]  # never offered again, not even as a delta base
                return None
            self._verified.add(oid)
        return view

    def __getitem__(self, oid: str) -> memoryview:
        sf, entry, chunk = self._where[oid]
        if not entry.shape:
            return sf.tensor(entry.name)
        touched = getattr(self._touched, "rows", None)
        if touched is None:
            touched = self._touched.rows = []
        touched.append((sf, entry.name, chunk.start, chunk.stop))
        return sf.rows(entry.name, chunk.start, chunk.stop)

    def __contains__(self, oid: object) -> bool:
        return oid in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def release(self) -> None:
        """Let this thread's pages of the old files leave the process (they stay cached),
        so a checkout's resident set does not grow to the size of the model."""
        rows = getattr(self._touched, "rows", None) or []
        self._touched.rows = []
        for sf, name, start, stop in rows:
            sf.done_with_rows(name, start, stop)

    def close(self) -> None:
        for sf in self._files:
            sf.close()
        self._files.clear()
        self._where.clear()


def placements(writer: RowWriter, manifest: Manifest) -> dict[str, list[Placement]]:
    """Object id -> every place in ``writer``'s file its bytes go (a repeated chunk once)."""
    slots: dict[str, list[Placement]] = {}
    for entry in manifest.tensors:
        for chunk in entry.chunks:
            slots.setdefault(chunk.oid, []).append((writer, entry.name, chunk.start))
    return slots


def fill(
    store: ObjectStore,
    slots: Mapping[str, Sequence[Placement]],
    known: WorktreeChunks | None = None,
    workers: int | None = None,
) -> None:
    """Decode every object of ``slots`` once and write it to each of its places.

    ``workers`` (default ``mvc.tuning.threads()``) objects decode at once, each by one
    thread (with a single worker the store spreads one object's pieces instead). The
    bytes written do not depend on the number of workers. The first error stops the rest
    and is raised. Freed chunk buffers are kept for reuse (``mvc.memory``), so each
    decode does not page-fault a fresh 16 MiB in.
    """
    count = workers or threads()
    reuse_large_buffers(2 * DEFAULT_CHUNK_BYTES)

    def one(oid: str, places: Sequence[Placement]) -> None:
        try:
            with store.serial_pieces(count > 1):
                data = _decoded(store, oid, known)
            for writer, name, first_row in places:
                writer.write(name, first_row, data)
        finally:
            if known is not None:
                known.release()

    with ThreadPoolExecutor(count, thread_name_prefix="mvc-checkout") as pool:
        futures: list[Future] = [pool.submit(one, oid, p) for oid, p in slots.items()]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _decoded(store: ObjectStore, oid: str, known: WorktreeChunks | None) -> memoryview:
    """``oid``'s bytes: from the old work tree when it holds them, else decoded (a delta
    on its base's old bytes when the work tree holds those)."""
    if known is None:
        return store.get_view(oid)
    same = known.verified(oid)
    if same is not None:
        return same
    try:
        return store.get_view(oid, known)
    except CorruptObjectError:
        return store.get_view(oid)  # the old bytes were not the base's: decode it all


def materialize(
    store: ObjectStore, manifest: Manifest, path: Path, known: WorktreeChunks | None = None
) -> None:
    """Write the byte-identical safetensors file for ``manifest`` at ``path``, atomically.

    The file is filled in a temp file beside ``path`` (the hidden ``.<name>.<hex>.tmp``
    that recovery tidies after a crash), fsynced, then renamed over ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    writer = RowWriter(tmp, manifest.header_raw)
    try:
        fill(store, placements(writer, manifest), known)
        writer.close()
    except BaseException:
        writer.discard()
        raise
    publish(tmp, path)
