"""Manifests: how a safetensors file appears in a git tree.

A model file is stored in git as a small, deterministic JSON blob at the file's own path.
It keeps the file's original header bytes verbatim (so checkout is byte-identical whoever
wrote the file) and, per tensor in data order, the store objects that hold its row chunks.
The JSON is canonical (sorted keys, no spaces), so one model has one manifest blob id and
git's own tree diffing tells which files changed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from mvc.errors import FormatError
from mvc.formats.jsonutil import strict_loads
from mvc.formats.safetensors import Header, parse_header

MANIFEST_KIND = "manifest"
MANIFEST_VERSION = 1
_OID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of dim 0 of a tensor, stored as one object."""

    start: int
    stop: int
    oid: str


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a model file: its layout and the objects holding its chunks."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: tuple[Chunk, ...]

    @property
    def chunk_ids(self) -> tuple[str, ...]:
        return tuple(chunk.oid for chunk in self.chunks)

    def same_layout(self, other: TensorEntry) -> bool:
        """True when chunk i of one is the same rows of the same dtype as chunk i of the other."""
        return (
            self.dtype == other.dtype
            and self.shape == other.shape
            and [(c.start, c.stop) for c in self.chunks]
            == [(c.start, c.stop) for c in other.chunks]
        )


@dataclass(frozen=True)
class Manifest:
    """A safetensors file: original header bytes plus its tensors' chunk objects."""

    header_raw: bytes
    tensors: tuple[TensorEntry, ...]

    @property
    def header(self) -> Header:
        return parse_header(self.header_raw, self.data_size)

    @property
    def data_size(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def tensor(self, name: str) -> TensorEntry:
        for entry in self.tensors:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def by_name(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for entry in self.tensors}

    def object_ids(self) -> Iterator[str]:
        for entry in self.tensors:
            yield from entry.chunk_ids

    def to_bytes(self) -> bytes:
        doc = {
            "mvc": MANIFEST_KIND,
            "version": MANIFEST_VERSION,
            "header": base64.b64encode(self.header_raw).decode("ascii"),
            "tensors": [
                {
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "nbytes": t.nbytes,
                    "chunks": [{"rows": [c.start, c.stop], "id": c.oid} for c in t.chunks],
                }
                for t in self.tensors
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, blob: bytes, path: str = "<manifest>") -> Manifest:
        """Parse and validate a manifest blob; a hostile blob gives FormatError, never more."""
        doc = strict_loads(blob, f"{path}: manifest")  # also bounds nesting depth
        if not is_manifest_doc(doc):
            raise FormatError(f"{path}: not an mvc manifest")
        if doc.get("version") != MANIFEST_VERSION:
            raise FormatError(
                f"{path}: manifest version {doc.get('version')!r} is not supported",
                hint="upgrade mvc",
            )
        try:
            header_raw = base64.b64decode(doc["header"], validate=True)
            tensors = tuple(_parse_tensor(t, path) for t in doc["tensors"])
        except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as err:
            raise FormatError(f"{path}: malformed manifest ({err})") from None
        manifest = cls(header_raw=header_raw, tensors=tensors)
        _check_against_header(manifest, path)
        return manifest


def is_manifest_doc(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("mvc") == MANIFEST_KIND


def _parse_tensor(doc: dict, path: str) -> TensorEntry:
    shape = tuple(doc["shape"])
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise FormatError(f"{path}: tensor {doc['name']!r} has a bad shape")
    chunks = []
    for c in doc["chunks"]:
        start, stop = c["rows"]
        oid = c["id"]
        if not (isinstance(oid, str) and _OID.match(oid)):
            raise FormatError(f"{path}: tensor {doc['name']!r} names a malformed object id")
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop):
            raise FormatError(f"{path}: tensor {doc['name']!r} has bad chunk rows")
        chunks.append(Chunk(start, stop, oid))
    name = doc["name"]
    if not isinstance(name, str):
        raise FormatError(f"{path}: a tensor name is not a string")
    return TensorEntry(name, str(doc["dtype"]), shape, int(doc["nbytes"]), tuple(chunks))


def _check_against_header(manifest: Manifest, path: str) -> None:
    """The manifest's tensors must be exactly the header's, in data order, fully chunked."""
    header = parse_header(manifest.header_raw, manifest.data_size)
    if len(header.tensors) != len(manifest.tensors):
        raise FormatError(f"{path}: manifest and header list different tensors")
    for info, entry in zip(header.tensors, manifest.tensors, strict=True):
        if (info.name, info.dtype, tuple(info.shape), info.nbytes) != (
            entry.name,
            entry.dtype,
            entry.shape,
            entry.nbytes,
        ):
            raise FormatError(f"{path}: manifest entry {entry.name!r} disagrees with the header")
        rows = entry.shape[0] if entry.shape else 1
        expected_start = 0
        for chunk in entry.chunks:
            if chunk.start != expected_start or chunk.stop <= chunk.start and rows > 0:
                raise FormatError(f"{path}: tensor {entry.name!r} chunks do not tile its rows")
            expected_start = chunk.stop
        if not entry.chunks or expected_start != rows:
            if not (rows == 0 and len(entry.chunks) == 1):
                raise FormatError(f"{path}: tensor {entry.name!r} chunks do not tile its rows")
