"""The clean/smudge filter that lets plain `git` store safetensors files as mvc manifests.

Clean (work tree -> git): the file's bytes are spooled to a temp file beside the store, so
memory stays bounded whatever the model size, then ingested exactly as `mvc add` does
(each row chunk delta-encoded against the version in the index), and the manifest becomes
the blob. Smudge (git -> work tree): the manifest's objects are streamed out chunk by
chunk as the byte-identical file. Blobs that are not manifests pass through untouched, so
history written before the filter was installed still checks out.

`serve` speaks git's long-running `filter.<driver>.process` protocol, so one process
handles every file of a `git add` or `git checkout` instead of one Python start per file.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.index import IndexEntry
from dulwich.protocol import Protocol
from dulwich.repo import Repo as GitRepo

from mvc.errors import FormatError, MvcError, NotFoundError
from mvc.formats.jsonutil import strict_loads
from mvc.repo.core import MVC_DIR
from mvc.repo.ingest import ingest_file, iter_file_chunks, manifest_ids_only
from mvc.repo.manifest import Manifest, TensorEntry, is_manifest_doc
from mvc.store import ObjectStore

COPY_BYTES = 1 << 20
# A manifest lists a few dozen bytes per 16 MiB chunk: even a huge model's is far below this.
MAX_MANIFEST_BYTES = 64 << 20
SPOOL_DIR = "tmp"  # inside the mvc folder: the filter's temp copies of files in transit


def store_dir(common_git_dir: Path) -> Path:
    """The mvc folder (tensor store) of a git repository, created on first use."""
    folder = common_git_dir / MVC_DIR
    (folder / "objects").mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class GitContext:
    """The git repository a filter or merge driver runs in, and its mvc tensor store."""

    git: GitRepo
    store: ObjectStore
    tmp: Path

    @classmethod
    def discover(cls, start: str | Path = ".") -> GitContext:
        """The repository containing `start` (git runs drivers at the work tree's top).

        The store sits in the common git dir, so linked worktrees share it; it is created
        on first use, which lets a global install serve repositories never `mvc init`-ed.
        """
        try:
            git = GitRepo.discover(str(start))
        except NotGitRepository:
            raise NotFoundError(f"not a git repository: {Path(start).resolve()}") from None
        mvc_dir = store_dir(Path(git.commondir()))
        tmp = mvc_dir / SPOOL_DIR
        tmp.mkdir(exist_ok=True)
        return cls(git, ObjectStore(mvc_dir), tmp)

    def spool(self) -> IO[bytes]:
        """A temp file in the store's folder (same disk, removed on close)."""
        return tempfile.NamedTemporaryFile(dir=self.tmp, prefix="spool-")

    def previous_tensors(self, path: str) -> dict[str, TensorEntry]:
        """Delta bases: the tensors of the version of `path` staged in git's index."""
        try:
            entry = self.git.open_index()[path.encode()]
            if not isinstance(entry, IndexEntry):
                return {}
            blob = self.git.object_store[entry.sha].as_raw_string()
            return Manifest.from_bytes(blob, path).by_name()
        except (KeyError, FormatError, OSError):
            return {}


def read_manifest(handle: IO[bytes], path: str) -> tuple[Manifest, bytes] | None:
    """The manifest held by an open file (and its bytes), or None for anything else.

    A safetensors file starts with its header's length (8 bytes, little-endian) and then
    the header; when those bytes announce a header that fits in the file it is a model, and
    is not read further, whatever its first byte (one file in 256 starts with "{"). Only a
    small blob that parses as an mvc manifest document is one; a document that claims to be
    a manifest but is malformed is an error, not something to pass through.
    """
    size = handle.seek(0, 2)
    handle.seek(0)
    prefix = handle.read(8)
    handle.seek(0)
    if len(prefix) == 8 and 8 + struct.unpack("<Q", prefix)[0] <= size:
        return None
    if size > MAX_MANIFEST_BYTES or not prefix.lstrip().startswith(b"{"):
        return None
    data = handle.read()
    try:
        doc = strict_loads(data, f"{path}: manifest")
    except FormatError:
        return None
    if not is_manifest_doc(doc):
        return None
    return Manifest.from_bytes(data, path), data


def clean(ctx: GitContext, path: str, spool: IO[bytes]) -> bytes:
    """The blob git stores for the file whose bytes are in `spool` (a named temp file)."""
    if spool.seek(0, 2) == 0:
        return b""
    found = read_manifest(spool, path)
    if found is not None:
        return found[1]  # already clean (e.g. `git add --renormalize`)
    try:
        manifest = ingest_file(ctx.store, Path(spool.name), ctx.previous_tensors(path))
    except FormatError as err:
        raise FormatError(f"{path}: {err.message}", hint=err.hint) from None
    return manifest.to_bytes()


def smudge(ctx: GitContext, path: str, spool: IO[bytes]) -> Iterator[bytes]:
    """The work-tree bytes for the blob in `spool`, checked before the first byte is sent.

    Every object must be present before streaming starts, so a missing one is reported
    cleanly instead of leaving git with half a file.
    """
    found = read_manifest(spool, path)
    if found is None:
        spool.seek(0)
        return iter(lambda: spool.read(COPY_BYTES), b"")
    manifest = found[0]
    missing = [oid for oid in manifest.object_ids() if not ctx.store.has(oid)]
    if missing:
        raise NotFoundError(
            f"{path}: {len(missing)} tensor object(s) are missing from {ctx.store.root} "
            f"(first: {missing[0]})",
            hint="fetch them from the mvc remote (`mvc fetch`), then check the file out again",
        )
    return _file_bytes(ctx.store, manifest)


def _file_bytes(store: ObjectStore, manifest: Manifest) -> Iterator[bytes | memoryview]:
    yield struct.pack("<Q", len(manifest.header_raw)) + manifest.header_raw
    yield from iter_file_chunks(store, manifest)


def textconv(data_path: Path) -> str:
    """One line per tensor (name, dtype, shape, object ids), for `git diff`.

    git hands a textconv either the stored blob (a manifest) or the work-tree file itself,
    so both are accepted; the ids of a work-tree file are computed without storing it.
    """
    with open(data_path, "rb") as handle:
        found = read_manifest(handle, str(data_path))
    if found is not None:
        manifest = found[0]
    else:
        try:
            manifest = manifest_ids_only(data_path)
        except FormatError as err:
            return f"not a safetensors file: {err.message}\n"
    lines = [
        f"{t.name}\t{t.dtype}{list(t.shape)}\t{','.join(t.chunk_ids)}" for t in manifest.tensors
    ]
    metadata = manifest.header.metadata
    if metadata:
        lines.insert(0, f"__metadata__\t{json.dumps(metadata, sort_keys=True)}")
    return "".join(f"{line}\n" for line in lines)


# ------------------------------------------------------------------ one file per process
def run_once(ctx: GitContext, command: str, path: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """`filter.mvc.clean`/`smudge`: one file from stdin to stdout."""
    with ctx.spool() as spool:
        shutil.copyfileobj(stdin, spool, COPY_BYTES)
        spool.flush()
        if command == "clean":
            stdout.write(clean(ctx, path, spool))
        else:
            for piece in smudge(ctx, path, spool):
                stdout.write(piece)
    stdout.flush()


# ------------------------------------------------------------------ long-running process
#: The largest pkt-line payload git sends or accepts.
MAX_PAYLOAD = 65516


class ProtocolError(MvcError):
    """The other end broke the pkt-line framing or the filter handshake."""


class Packets:
    """git's filter protocol (lists of text lines, and content streams, each ended by a
    flush) over dulwich's pkt-line framing."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self._stdout = stdout
        self._proto = Protocol(stdin.read, stdout.write)

    def _read(self) -> bytes | None:
        """The next payload, or None for a flush; EOFError when git closed the pipe."""
        try:
            return self._proto.read_pkt_line()
        except HangupException:
            raise EOFError("pkt-line stream ended") from None
        except GitProtocolError as err:
            raise ProtocolError(f"bad pkt-line framing: {err}") from None

    def read_list(self) -> list[str]:
        """Text packets up to the next flush, each without its trailing newline."""
        lines = []
        while (payload := self._read()) is not None:
            lines.append(payload.decode("utf-8").removesuffix("\n"))
        return lines

    def read_keys(self) -> dict[str, str]:
        """A flush-terminated list of `key=value` lines, as git sends per-file requests."""
        return dict(line.partition("=")[::2] for line in self.read_list())

    def read_content(self) -> Iterator[bytes]:
        """Binary payloads up to the next flush (a file's content)."""
        while (payload := self._read()) is not None:
            yield payload

    def write_list(self, lines: Iterable[str]) -> None:
        """Text lines (newline-terminated) followed by a flush."""
        for line in lines:
            self._proto.write_pkt_line(f"{line}\n".encode())
        self.flush()

    def write_content(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Split `pieces` into packets; the caller ends the stream with `flush`."""
        for piece in pieces:
            view = memoryview(piece).cast("B")
            for start in range(0, len(view), MAX_PAYLOAD):
                self._proto.write_pkt_line(bytes(view[start : start + MAX_PAYLOAD]))

    def flush(self) -> None:
        """A flush packet, pushed out to git at once."""
        self._proto.write_pkt_line(None)
        self._stdout.flush()


def serve(ctx: GitContext, stdin: BinaryIO, stdout: BinaryIO, errors: IO[str] = sys.stderr) -> None:
    """Answer git's filter requests until it closes our stdin."""
    packets = Packets(stdin, stdout)
    _handshake(packets)
    while True:
        try:
            request = packets.read_keys()
        except EOFError:
            return
        command, path = request.get("command", ""), request.get("pathname", "")
        with ctx.spool() as spool:
            for payload in packets.read_content():
                spool.write(payload)
            spool.flush()
            try:
                if command == "clean":
                    output: Iterable[bytes] = [clean(ctx, path, spool)]
                elif command == "smudge":
                    output = smudge(ctx, path, spool)
                else:
                    raise ProtocolError(f"git asked for an unknown filter command {command!r}")
            except (MvcError, OSError) as err:
                _report(errors, err)
                packets.write_list(["status=error"])
                continue
            packets.write_list(["status=success"])
            try:
                packets.write_content(output)
            except (MvcError, OSError) as err:
                packets.flush()
                _report(errors, err)
                packets.write_list(["status=error"])
                continue
            packets.flush()
            packets.write_list([])  # an empty list keeps "success"


def _handshake(packets: Packets) -> None:
    try:
        welcome = packets.read_list()
        if welcome[:1] != ["git-filter-client"] or "version=2" not in welcome:
            raise ProtocolError(f"unexpected filter handshake {welcome!r}")
        packets.write_list(["git-filter-server", "version=2"])
        offered = set(packets.read_list())
    except EOFError:
        raise ProtocolError("git closed the filter pipe during the handshake") from None
    packets.write_list([c for c in ("capability=clean", "capability=smudge") if c in offered])


def _report(errors: IO[str], err: BaseException) -> None:
    message = err.message if isinstance(err, MvcError) else str(err)
    print(f"mvc: error: {message}", file=errors)
    hint = getattr(err, "hint", None)
    if hint:
        print(f"hint: {hint}", file=errors)
    errors.flush()
