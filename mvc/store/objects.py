"""The content-addressed tensor object store (``.git/mvc/objects``).

Objects live at ``objects/<2 hex>/<30 hex>`` like git's loose objects. Every write goes to
a temp file in the destination folder, is fsynced and renamed over the final name (and
the folder fsynced), so a crash leaves either no object or a complete one; concurrent
writers of the same id (threads or processes) each rename a complete file, and any of them
is valid. Every read decodes and checks the id, bases included, except bases whose bytes
the caller already read from the store and hands back (``get(known=...)``).

Deltas are bounded: an object's depth is the number of deltas between it and a full
object; a delta that would exceed ``MAX_DELTA_DEPTH`` is stored full instead, so reading
any object costs at most ``MAX_DELTA_DEPTH + 1`` decodes however long the history.

A delta's base is an object of the same dtype and shape, or the same rows before rows were
appended (same trailing dims, fewer rows: ``grows_from``); such a base is applied as if
zero-padded to the object's length, so a chunk that gained rows (new token embeddings)
stores its old rows as a delta and the new ones as they are.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from mvc.errors import CorruptObjectError, NotFoundError
from mvc.files import TEMP_PREFIX, FolderSyncs, atomic_write, fsync_dir
from mvc.formats.dtypes import get_dtype
from mvc.store.bases import grows_from, known_bytes, padded
from mvc.store.chunking import PIECE_BYTES
from mvc.store.codec_header import Codec, CodecError, Mapper
from mvc.store.gc import GcReport
from mvc.store.ids import check_object_id, is_object_id, object_id
from mvc.store.objfile import (
    HEADER_PREFIX_MAX,
    MAX_DELTA_DEPTH,
    ObjectHeader,
    pack_header,
    parse_header,
    parse_object,
    trailer,
)
from mvc.tuning import threads

IO_WORKERS = 8
MAX_PENDING_WRITES = 8  # bounds the encoded objects held in memory awaiting their write
_FSCK_HINT = "run `mvc fsck` to list damaged objects; fetch them again from a remote"


@dataclass(frozen=True)
class ObjectInfo:
    """What an object's header says, without decoding it."""

    dtype: str
    shape: tuple[int, ...]
    codec: str
    base: str | None
    depth: int
    stored_size: int
    raw_size: int


class Promisor(Protocol):
    """Where objects this store lacks can be fetched from (a lazy clone's remote; see
    ``mvc.remote.promisor``). ``fetch`` stores them (bases first) or raises ``MvcError``."""

    def fetch(self, oids: Sequence[str]) -> None: ...


class PutRequest(NamedTuple):
    """One ``put`` for ``put_many``; a plain tuple of the same fields in order works too."""

    data: bytes | bytearray | memoryview
    dtype: str
    shape: tuple[int, ...]
    base: str | None = None
    base_data: bytes | bytearray | memoryview | None = None


def _corrupt(oid: str, reason: str) -> CorruptObjectError:
    return CorruptObjectError(f"object {oid} is corrupt: {reason}", hint=_FSCK_HINT)


class ObjectStore:
    """Tensor objects under ``root/objects``; safe to use from many threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._local = threading.local()
        # Set by the remote layer in a lazy clone: every read of a missing object asks it.
        self.promisor: Promisor | None = None

    # -- paths ---------------------------------------------------------------------------

    def path(self, oid: str) -> Path:
        """Where object ``oid`` lives (whether or not it exists)."""
        check_object_id(oid)
        return self.objects / oid[:2] / oid[2:]

    def has(self, oid: str) -> bool:
        return is_object_id(oid) and self.path(oid).is_file()

    def ids(self) -> Iterator[str]:
        """Every stored object id (temp files and stray names are skipped)."""
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            try:
                names = sorted(f.name for f in sub.iterdir())
            except FileNotFoundError:  # removed by a concurrent gc
                continue
            for name in names:
                oid = sub.name + name
                if is_object_id(oid):
                    yield oid

    def stored_size(self, oid: str) -> int:
        try:
            return self.path(oid).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"object {oid} not found") from None

    # -- reading ---------------------------------------------------------------------------

    def prefetch(self, oids: Iterable[str]) -> None:
        """Fetch, in one parallel batch, those of ``oids`` that are promised, not here."""
        missing = [oid for oid in dict.fromkeys(oids) if not self.has(oid)]
        if missing and self.promisor is not None:
            self.promisor.fetch(missing)

    def _present(self, oid: str) -> Path:
        """The object's file; a missing one is fetched from the promisor when there is one.

        Every read of the store comes through here, so a lazy clone fetches on demand
        whatever a command reads, without the command knowing.
        """
        path = self.path(oid)
        if not path.is_file() and self.promisor is not None:
            self.promisor.fetch([oid])
        return path

    def read_raw(self, oid: str) -> bytes:
        """The stored (encoded) file, as a remote sends it."""
        try:
            return self._present(oid).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"object {oid} not found") from None

    def _header(self, oid: str) -> tuple[ObjectHeader, int]:
        path = self._present(oid)
        try:
            with open(path, "rb") as f:
                prefix = f.read(HEADER_PREFIX_MAX)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise NotFoundError(f"object {oid} not found") from None
        try:
            return parse_header(prefix), size
        except CodecError as exc:
            raise _corrupt(oid, str(exc)) from None

    def info(self, oid: str) -> ObjectInfo:
        h, size = self._header(oid)
        return ObjectInfo(h.dtype, h.shape, h.codec.name.lower(), h.base, h.depth, size, h.raw_size)

    def get(self, oid: str, known: Mapping[str, bytes | memoryview] | None = None) -> bytes:
        """The decoded bytes of ``oid``, verified against the id (and every base's id).

        ``known`` maps ids to bytes the caller already got from this store's ``get`` (so
        already verified). The delta chain is followed only down to the first of them and
        the deltas above it are applied on those bytes: a fine-tune's chunk read after its
        base chunk costs one decode, not two. Every level decoded here is still verified.
        """
        return bytes(self.get_view(oid, known))

    def get_view(
        self, oid: str, known: Mapping[str, bytes | memoryview] | None = None
    ) -> memoryview:
        """``get`` without its final copy: a view of the decode buffer (what ``get`` copies).

        For callers that only read the bytes (the merge, checkout), which saves one copy of
        every chunk they read.
        """
        if known is not None and oid in known:
            return memoryview(known[oid]).cast("B")
        return self._decode(oid, self.read_raw(oid), known)

    def verify(self, oid: str, stored: bytes | None = None) -> None:
        """Raise ``CorruptObjectError`` (or ``NotFoundError``) unless ``oid`` decodes to its id.

        ``stored``: the object's encoded file when the caller has read it already (a push
        sends those very bytes), so it is not read a second time.
        """
        self._decode(oid, self.read_raw(oid) if stored is None else stored)

    def check_intact(self, oid: str, stored: bytes) -> None:
        """Raise ``CorruptObjectError`` unless ``stored`` is an undamaged object file.

        The file's xxh3 trailer and frame table only, at memory speed: every object was
        verified against its id when it was written, so this catches any byte changed since
        (``verify`` decodes the delta chain too, for when even that is in doubt).
        """
        try:
            parse_object(stored)
        except CodecError as exc:
            raise _corrupt(oid, str(exc)) from None

    def _decode(
        self, oid: str, stored: bytes, known: Mapping[str, bytes | memoryview] | None = None
    ) -> memoryview:
        """Decode ``stored`` as object ``oid``: walk down the delta chain, then apply upward.

        Iterative, not recursive; each base must be exactly one level shallower, which also
        rules out cycles in a hostile chain. The walk stops at a base found in ``known``.
        """
        chain: list[tuple[str, ObjectHeader, list[memoryview]]] = []
        data: bytes | memoryview | None = None
        current, buf = oid, stored
        while True:
            try:
                header, frames = parse_object(buf)
            except CodecError as exc:
                raise _corrupt(current, str(exc)) from None
            if chain and (
                header.depth != chain[-1][1].depth - 1
                or header.dtype != chain[-1][1].dtype
                or not grows_from(header.shape, chain[-1][1].shape)
            ):
                raise _corrupt(chain[-1][0], f"delta base {current} does not fit it")
            chain.append((current, header, frames))
            if header.base is None:
                break
            current = header.base
            if known is not None and current in known:
                size = header.raw_size
                if memoryview(known[current]).nbytes != size:  # a shorter base, or a mistake
                    base_header, _ = self._header(current)
                    if not grows_from(base_header.shape, header.shape):
                        raise _corrupt(chain[-1][0], f"delta base {current} does not fit it")
                    size = base_header.raw_size
                data = known_bytes(current, known[current], size)
                break
            try:
                buf = self.read_raw(current)
            except NotFoundError:
                raise _corrupt(chain[-1][0], f"its delta base {current} is missing") from None
        # Imported here, not at the top: the transforms need numpy, which commands that only
        # read or copy stored files (a push, see ``check_intact``) never import.
        from mvc.store import codecs

        for current, header, frames in reversed(chain):
            if data is not None and header.codec.is_delta:
                data = padded(data, header.raw_size)
            try:
                data = codecs.decode(
                    header.codec,
                    frames,
                    header.raw_size,
                    header.itemsize,
                    data,
                    piece_bytes=header.piece_bytes,
                    mapper=self._mapper(),
                )
            except CodecError as exc:
                raise _corrupt(current, str(exc)) from None
            if object_id(header.dtype, header.shape, data) != current:
                raise _corrupt(current, "content does not match its id")
        assert data is not None
        return data

    # -- writing -----------------------------------------------------------------------------

    def put(
        self,
        data: bytes | bytearray | memoryview,
        dtype: str,
        shape: Sequence[int],
        base: str | None = None,
        base_data: bytes | bytearray | memoryview | None = None,
    ) -> str:
        """Store ``data`` (raw little-endian bytes of a ``dtype`` tensor of ``shape``).

        Returns its id at once when it is already stored. With ``base`` (an object of the
        same dtype and shape, or its first rows (``grows_from``), typically the same chunk in
        the parent commit) XOR and
        subtraction deltas are tried too and the smallest encoding wins; a base that is
        missing, does not fit, or is already ``MAX_DELTA_DEPTH`` deep is not used.

        ``base_data``, the content of ``base`` when the caller already has it (a merge has
        just read it), saves decoding the base again. Its id is still checked (a hash, cheap
        next to a decode) because a delta against the wrong bytes would be stored as an
        object that never decodes: bytes that are not ``base``'s content raise
        ``ValueError``. It is ignored when ``base`` is not used.
        """
        oid, path, chunks = self._encode(data, dtype, shape, base, base_data)
        if chunks is not None:
            self._write_atomic(path, chunks)
        return oid

    def _encode(
        self,
        data: bytes | bytearray | memoryview,
        dtype: str,
        shape: Sequence[int],
        base: str | None,
        base_data: bytes | bytearray | memoryview | None = None,
    ) -> tuple[str, Path, list[bytes] | None]:
        """The id, final path and file contents of a put (``None`` when already stored)."""
        view = memoryview(data).cast("B")
        shape = tuple(int(d) for d in shape)
        itemsize = get_dtype(dtype).itemsize
        if view.nbytes != math.prod(shape) * itemsize:
            raise ValueError(f"{view.nbytes} bytes do not hold a {dtype}{list(shape)} tensor")
        oid = object_id(dtype, shape, view)
        path = self.path(oid)
        if path.is_file():
            return oid, path, None
        base_bytes, depth = self._usable_base(base, oid, dtype, shape, base_data)
        from mvc.store import codecs  # numpy, only once something is encoded (see _decode)

        codec, frames = codecs.encode(view, itemsize, base_bytes, mapper=self._mapper())
        header = pack_header(
            codec,
            dtype,
            shape,
            view.nbytes,
            depth if codec.is_delta else 0,
            base if codec.is_delta else None,
            0 if codec is Codec.RAW else PIECE_BYTES,
            [] if codec is Codec.RAW else [len(f) for f in frames],
        )
        chunks = [header, *frames]
        return oid, path, [*chunks, trailer(chunks)]

    def _usable_base(
        self,
        base: str | None,
        oid: str,
        dtype: str,
        shape: tuple[int, ...],
        base_data: bytes | bytearray | memoryview | None,
    ) -> tuple[bytes | memoryview | None, int]:
        """The base's content and the depth a delta on it would have, or ``(None, 0)``.

        The content is ``base_data`` once its id checks out, else the decoded base.
        """
        if base is None or base == oid or not self.has(base):
            return None, 0
        try:
            h, _ = self._header(base)
            if h.dtype != dtype or not grows_from(h.shape, shape) or h.depth + 1 > MAX_DELTA_DEPTH:
                return None, 0
            size = math.prod(shape) * get_dtype(dtype).itemsize
            if base_data is None:
                return padded(self.get_view(base), size), h.depth + 1
            view = memoryview(base_data).cast("B")
            if object_id(dtype, h.shape, view) != base:
                raise ValueError(f"base_data is not the content of object {base}")
            return padded(view, size), h.depth + 1
        except CorruptObjectError:
            # A damaged base must not stop new content from being stored; fsck reports it.
            return None, 0

    def put_many(
        self,
        requests: Iterable[PutRequest | tuple],
        workers: int | None = None,
        done_reading: Callable[[int], None] | None = None,
    ) -> list[str]:
        """``put`` each request; ids in request order. ``done_reading(i)`` is called once
        request ``i``'s data is read (encoded or found stored): a file mapping can let it go.
        ``workers`` threads (default ``mvc.tuning.threads()``: every core) hash and compress
        whole objects, each one's pieces serially (no nested pools) unless it is alone.
        Writes go to ``IO_WORKERS`` threads: concurrent fsyncs share journal commits, where
        one writer would wait for a commit per file. A request's ``base`` must already be
        stored (not merely in the same batch) to be used.
        """
        reqs = [r if isinstance(r, PutRequest) else PutRequest(*r) for r in requests]
        pending = threading.BoundedSemaphore(MAX_PENDING_WRITES)
        serial = len(reqs) > 1

        def write(path: Path, chunks: list[bytes]) -> None:
            try:
                self._write_atomic(path, chunks)
            finally:
                pending.release()

        with (
            ThreadPoolExecutor(workers or threads(), thread_name_prefix="mvc-put") as cpu,
            ThreadPoolExecutor(IO_WORKERS, thread_name_prefix="mvc-io") as io,
        ):

            def one(item: tuple[int, PutRequest]) -> tuple[str, Future | None]:
                index, r = item
                with self.serial_pieces(serial):
                    oid, path, chunks = self._encode(r.data, r.dtype, r.shape, r.base, r.base_data)
                if done_reading is not None:
                    done_reading(index)
                if chunks is None:
                    return oid, None
                pending.acquire()
                return oid, io.submit(write, path, chunks)

            results = list(cpu.map(one, enumerate(reqs)))
            for _, fut in results:
                if fut is not None:
                    fut.result()
        return [oid for oid, _ in results]

    def write_raw(
        self,
        oid: str,
        stored: bytes,
        known: Mapping[str, bytes | memoryview] | None = None,
        folder_syncs: FolderSyncs | None = None,
    ) -> memoryview | None:
        """Keep an encoded object received from elsewhere, after decoding and verifying it.

        A delta's base must already be stored, so a batch must be written bases first;
        ``known`` (as for ``get``) holds the base's bytes when the caller has them, so the
        base's chain is not decoded again. Returns the decoded bytes (None when the object
        was here already), for the deltas that come next.

        With ``folder_syncs`` (a batch, see ``mvc.files.FolderSyncs``) the folder fsync is
        left to the batch's flush, except that a delta's base is made durable before the
        delta is renamed into place: a crash never leaves a delta without its base.
        """
        path = self.path(oid)
        if path.is_file():
            return None
        data = self._decode(oid, stored, known)
        if folder_syncs is not None and (base := parse_header(stored).base) is not None:
            folder_syncs.durable(self.path(base).parent)
            folder_syncs.durable(self.path(base))
        self._write_atomic(path, [stored], folder_syncs)
        return data

    def _write_atomic(
        self,
        path: Path,
        chunks: Sequence[bytes | memoryview],
        folder_syncs: FolderSyncs | None = None,
    ) -> None:
        folder = path.parent
        if folder_syncs is not None:
            folder_syncs.mkdir(folder)
        elif not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(folder.parent)
        atomic_write(path, chunks, prefix=TEMP_PREFIX, folder_syncs=folder_syncs)

    # -- parallelism -------------------------------------------------------------------------

    @contextlib.contextmanager
    def serial_pieces(self, serial: bool = True) -> Iterator[None]:
        """In the block this thread codes an object's pieces itself (for a caller whose
        pool already runs one object per core: no nested pools)."""
        before, self._local.serial = getattr(self._local, "serial", False), serial
        try:
            yield
        finally:
            self._local.serial = before

    def _mapper(self) -> Mapper:
        """Map pieces over the store's pool, or serially (``serial_pieces``)."""
        if getattr(self._local, "serial", False):
            return map
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(threads(), thread_name_prefix="mvc-zstd")
        return self._pool.map

    def close(self) -> None:
        """Stop the piece pool (it is recreated on demand)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    # -- garbage collection --------------------------------------------------------------------

    def gc(self, live: Iterable[str]) -> GcReport:
        """Delete every object not in ``live`` nor a delta base of a live object (see
        ``mvc.store.gc``); the caller holds the repository lock."""
        from mvc.store.gc import collect_garbage

        return collect_garbage(self, live)
