"""Reading, validating and writing safetensors files without torch.

A safetensors file is ``u64 little-endian N``, ``N`` bytes of JSON, then the data. mvc keeps
the header bytes verbatim (so checkout reproduces files written by any tool byte for byte)
and treats every header as hostile until validated: the data region must be covered exactly
once, in order, by tensors whose byte length matches their shape and dtype.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import operator
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from mvc.errors import FormatError, NotFoundError
from mvc.files import atomic_write
from mvc.formats.dtypes import DTYPES, get_dtype
from mvc.formats.jsonutil import short, strict_loads

#: The safetensors library refuses headers above this size; so do we, before reading one.
MAX_HEADER_SIZE = 100_000_000

#: Order of the safetensors library's dtype enum; it lays tensors out by descending rank
#: (so wider, more aligned dtypes come first), then by name.
_LAYOUT_RANK = {
    name: rank
    for rank, name in enumerate(
        (
            "BOOL",
            "U8",
            "I8",
            "F8_E5M2",
            "F8_E4M3",
            "I16",
            "U16",
            "F16",
            "BF16",
            "I32",
            "U32",
            "F32",
            "F64",
            "I64",
            "U64",
        )
    )
}
assert set(_LAYOUT_RANK) == set(DTYPES)

_METADATA_KEY = "__metadata__"

TensorSpec = tuple[str, str, Sequence[int]]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a header; ``begin``/``end`` are byte offsets relative to the data start."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def row_nbytes(self) -> int:
        """Bytes per index of dim 0 (the unit of row-aligned chunks); the whole tensor if 0-d."""
        if not self.shape:
            return self.nbytes
        return math.prod(self.shape[1:]) * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Header:
    """A validated header: the raw bytes as found, tensors in data order, ``__metadata__``."""

    raw: bytes
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + len(self.raw)

    @property
    def data_size(self) -> int:
        return self.tensors[-1].end if self.tensors else 0

    @cached_property
    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.by_name[name]
        except KeyError:
            raise NotFoundError(f"no tensor {short(name)} in this file") from None


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise FormatError(f"invalid tensor name {short(name)}: must be a non-empty string")
    if "\0" in name:
        raise FormatError(f"invalid tensor name {short(name)}: contains NUL")
    if name == _METADATA_KEY:
        raise FormatError(f"invalid tensor name {name!r}: reserved for metadata")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"invalid tensor name {short(name)}: not valid UTF-8") from None
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (list, tuple)) and all(_is_int(d) and d >= 0 for d in shape):
        return tuple(shape)
    raise FormatError(
        f"tensor {short(name)}: shape must be a list of non-negative integers, got {short(shape)}"
    )


def _check_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise FormatError(f"__metadata__ must be an object of strings, got {short(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise FormatError(
                f"__metadata__ must map strings to strings, got {short(key)}: {short(value)}"
            )
        try:
            key.encode("utf-8")
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(f"__metadata__ entry {short(key)} is not valid UTF-8") from None
    return dict(metadata)


def _tensor_info(name: Any, entry: Any) -> TensorInfo:
    name = _check_name(name)
    if not isinstance(entry, dict):
        raise FormatError(f"tensor {short(name)}: entry must be an object, got {short(entry)}")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise FormatError(f"tensor {short(name)}: missing {field!r}")
    try:
        dtype = get_dtype(entry["dtype"])
    except FormatError as e:
        raise FormatError(f"tensor {short(name)}: {e.message}") from None
    shape = _check_shape(name, entry["shape"])
    offsets = entry["data_offsets"]
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise FormatError(
            f"tensor {short(name)}: data_offsets must be [begin, end] with 0 <= begin <= end, "
            f"got {short(offsets)}"
        )
    begin, end = offsets
    needed = math.prod(shape) * dtype.itemsize
    if end - begin != needed:
        raise FormatError(
            f"tensor {short(name)}: data_offsets span {end - begin} bytes but shape "
            f"{list(shape)} of {dtype.name} needs {needed}"
        )
    return TensorInfo(name, dtype.name, shape, begin, end)


def parse_header(raw: bytes, data_size: int | None = None) -> Header:
    """Validate header bytes; ``data_size`` (the bytes after the header) must be covered exactly.

    With ``data_size=None`` the data size is whatever the tensors cover (used when writing,
    where the header declares how many bytes must follow).
    """
    raw = bytes(raw)
    if len(raw) > MAX_HEADER_SIZE:
        raise FormatError(f"header is {len(raw)} bytes, over the {MAX_HEADER_SIZE} byte limit")
    obj = strict_loads(raw, "header")
    if not isinstance(obj, dict):
        raise FormatError(f"header is not a JSON object, got {type(obj).__name__}")

    metadata = None
    tensors = []
    for name, entry in obj.items():
        if name == _METADATA_KEY:
            metadata = _check_metadata(entry)
        else:
            tensors.append(_tensor_info(name, entry))

    if data_size is not None:
        for t in tensors:
            if t.end > data_size:
                raise FormatError(
                    f"tensor {short(t.name)}: data ends at byte {t.end}, past the end of the "
                    f"data ({data_size} bytes; file truncated?)"
                )
    # Stable sort: empty tensors sharing an offset keep their header order, as the
    # safetensors library writes them.
    tensors.sort(key=lambda t: (t.begin, t.end))
    cursor = 0
    previous = None
    for t in tensors:
        if t.begin < cursor:
            raise FormatError(
                f"tensor {short(t.name)} (bytes {t.begin}..{t.end}) overlaps tensor "
                f"{short(previous.name if previous else '')}"
            )
        if t.begin > cursor:
            raise FormatError(
                f"data bytes {cursor}..{t.begin} before tensor {short(t.name)} belong to no tensor"
            )
        cursor = t.end
        previous = t
    if data_size is not None and cursor != data_size:
        raise FormatError(f"data bytes {cursor}..{data_size} at the end belong to no tensor")
    return Header(raw, tuple(tensors), metadata)


def _truncated(size: int) -> FormatError:
    return FormatError(f"truncated: {size} bytes, too short for a safetensors header")


def _header_length(prefix: bytes, size: int) -> int:
    """Check the u64 header length against the file size before anything is read."""
    if size < 8:
        raise _truncated(size)
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_SIZE:
        raise FormatError(f"header length {n} is over the {MAX_HEADER_SIZE} byte limit")
    if 8 + n > size:
        raise FormatError(f"header length {n} runs past the end of the file ({size} bytes)")
    return n


def _in_file(path: Path, error: FormatError) -> FormatError:
    return FormatError(f"{path}: {error.message}", error.hint)


def _read_header_from(
    f: BinaryIO | mmap.mmap, size: int, path: Path, known: Header | None = None
) -> Header:
    """The file's validated header; `known` (validated before) is returned unparsed when
    the file still holds exactly its bytes and data size."""
    try:
        n = _header_length(f.read(8), size)
        raw = f.read(n)
        if known is not None and raw == known.raw and size - 8 - n == known.data_size:
            return known
        return parse_header(raw, size - 8 - n)
    except FormatError as e:
        raise _in_file(path, e) from None


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate a file's header without mapping or reading its data."""
    path = Path(path)
    with open(path, "rb") as f:
        return _read_header_from(f, os.fstat(f.fileno()).st_size, path)


class SafetensorsFile:
    """A validated safetensors file mapped read-only; tensors are served as memoryviews.

    The views share the mapping, so nothing is copied until a caller copies. ``close()``
    unmaps at once when no view is alive; views still held keep the mapping alive until
    they are dropped (unmapping under them would crash the process).
    """

    def __init__(self, path: str | os.PathLike[str], known: Header | None = None) -> None:
        """Map `path`; `known` is a header already read from it (`read_header`), which
        saves parsing it again when the file has not changed since."""
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:  # an empty file cannot even be mapped
                raise _in_file(self.path, _truncated(size))
            # The whole file is mapped, header included, so an empty data region needs no
            # special case and the header is parsed from the very bytes that are served.
            self._mmap: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.header = _read_header_from(self._mmap, len(self._mmap), self.path, known)
        except BaseException:
            self.close()
            raise
        self._view = memoryview(self._mmap)

    def tensor(self, name: str) -> memoryview:
        """The tensor's raw little-endian bytes."""
        info = self.header.tensor(name)
        start = self.header.data_start + info.begin
        return self._data()[start : start + info.nbytes]

    def rows(self, name: str, start: int, stop: int) -> memoryview:
        """Raw bytes of indices ``start:stop`` of dim 0 (a 0-d tensor has one row)."""
        info = self.header.tensor(name)
        nrows = info.shape[0] if info.shape else 1
        if not 0 <= start <= stop <= nrows:
            raise ValueError(f"rows {start}:{stop} out of range for {name!r} ({nrows} rows)")
        base = self.header.data_start + info.begin
        return self._data()[base + start * info.row_nbytes : base + stop * info.row_nbytes]

    def done_with_rows(self, name: str, start: int, stop: int) -> None:
        """Say rows ``start:stop`` of ``name`` will not be read again by this process.

        Their pages leave the process (they stay in the page cache, and a later read maps
        them back), so reading a model chunk by chunk does not grow the resident set to
        the size of the file. Pages shared with neighbouring rows are kept.
        """
        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.header.tensor(name)
        begin = self.header.data_start + info.begin
        first = -(-(begin + start * info.row_nbytes) // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (begin + stop * info.row_nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.header.tensors)

    def _data(self) -> memoryview:
        if self._mmap is None:
            raise ValueError(f"{self.path} is closed")
        return self._view

    def close(self) -> None:
        if self._mmap is None:
            return
        mapping, self._mmap = self._mmap, None
        if hasattr(self, "_view"):
            self._view.release()
        with contextlib.suppress(BufferError):
            mapping.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spec_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Accept any integer-like dims (numpy ints, torch.Size) but not bools or floats."""
    try:
        dims = [d if isinstance(d, bool) else operator.index(d) for d in shape]
    except TypeError:
        dims = shape
    return _check_shape(name, dims)


def plan_layout(specs: Iterable[TensorSpec]) -> list[TensorInfo]:
    """Where the safetensors library would put each tensor: by dtype rank, then by name."""
    checked: list[tuple[str, str, tuple[int, ...]]] = []
    seen: set[str] = set()
    for name, dtype, shape in specs:
        name = _check_name(name)
        if name in seen:
            raise FormatError(f"duplicate tensor name {short(name)}")
        seen.add(name)
        checked.append((name, get_dtype(dtype).name, _spec_shape(name, shape)))
    checked.sort(key=lambda s: (-_LAYOUT_RANK[s[1]], s[0]))
    infos = []
    offset = 0
    for name, dtype, shape in checked:
        end = offset + math.prod(shape) * DTYPES[dtype].itemsize
        infos.append(TensorInfo(name, dtype, shape, offset, end))
        offset = end
    return infos


def build_header(specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None) -> bytes:
    """Header bytes exactly as the safetensors library writes them for these tensors.

    Data must then follow in ``plan_layout(specs)`` order. Metadata keys are sorted (the
    library's own order is its hash map's, which varies from run to run).
    """
    obj: dict[str, Any] = {}
    if metadata is not None:
        obj[_METADATA_KEY] = dict(sorted(_check_metadata(metadata).items()))
    for t in plan_layout(specs):
        obj[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [t.begin, t.end]}
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def write_safetensors(
    path: str | os.PathLike[str],
    header_raw: bytes,
    chunks: Iterable[bytes | bytearray | memoryview],
) -> None:
    """Stream ``u64 len + header_raw + chunks`` to ``path`` atomically.

    The data must be exactly as long as the header declares; otherwise, or on any other
    error, the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    expected = parse_header(header_raw).data_size

    def checked() -> Iterator[bytes | bytearray | memoryview]:
        yield struct.pack("<Q", len(header_raw))
        yield header_raw
        written = 0
        for chunk in chunks:
            written += memoryview(chunk).nbytes
            if written > expected:
                raise FormatError(f"{path}: more data than the header declares ({expected} bytes)")
            yield chunk
        if written != expected:
            raise FormatError(f"{path}: got {written} data bytes, the header declares {expected}")

    atomic_write(path, checked())


class RowWriter:
    """A safetensors file filled tensor by tensor, row block by row block, in any order.

    A merge produces its output one chunk at a time and not in file order; this writes
    each chunk straight to its offset (``pwrite``), so the file exists once the last chunk
    is computed, without decoding anything back from the store; ``write`` may be called from
    many threads at once (checkout decodes on a pool). ``close`` refuses a file
    with bytes left unwritten, fsyncs it and leaves it at ``path`` for the caller to move
    into place; ``discard`` removes it.
    """

    def __init__(self, path: Path, header_raw: bytes) -> None:
        self.path = path
        self.header = parse_header(header_raw)
        self._missing = self.header.data_size
        self._count_lock = threading.Lock()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(path, flags, 0o666)
        try:
            os.pwrite(self._fd, struct.pack("<Q", len(header_raw)) + header_raw, 0)
            os.ftruncate(self._fd, self.header.data_start + self.header.data_size)
        except BaseException:
            self.discard()
            raise

    def write(self, name: str, first_row: int, data: bytes | memoryview) -> None:
        """Write ``data`` as the rows of tensor ``name`` starting at ``first_row``."""
        assert self._fd is not None, "write after close"
        info = self.header.tensor(name)
        view = memoryview(data).cast("B")
        begin = info.begin + first_row * info.row_nbytes
        if first_row < 0 or begin + view.nbytes > info.end:
            raise FormatError(f"{self.path}: rows past the end of {name}")
        offset = self.header.data_start + begin
        while view.nbytes:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
            with self._count_lock:
                self._missing -= written

    def close(self) -> Path:
        assert self._fd is not None, "closed twice"
        try:
            if self._missing:
                raise FormatError(f"{self.path}: {self._missing} data bytes never written")
            os.fsync(self._fd)
        except BaseException:
            self.discard()
            raise
        os.close(self._fd)
        self._fd = None
        return self.path

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
