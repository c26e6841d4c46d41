"""Receiving objects from a remote, verifying every one before anything can point at it.

Git objects: each loose object's sha is recomputed from its content. Blobs (leaves, which
can be large) are kept at once; trees and commits are held in memory and written children
first once the whole graph has arrived, so a tree or commit present in `.git` always has
everything below it: an interrupted fetch resumes from the blobs it kept, and "present
locally" stays a safe reason to stop walking.

Tensor objects: `ObjectStore.write_raw` decodes and checks every id, each object once: a
delta is checked against its base's bytes, which were checked when the base was stored. A
delta whose base has not arrived yet waits in `.git/mvc/incoming/` (never in memory), so a
clone of a long delta chain stays bounded in memory and an interrupted one keeps what it
downloaded.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from dulwich.objects import Blob, Commit, ShaFile

from mvc.errors import CorruptObjectError, FormatError
from mvc.files import TEMP_PREFIX, FolderSyncs, atomic_write
from mvc.progress import Tally
from mvc.remote.layout import git_object_key, tensor_object_key
from mvc.remote.negotiate import children, tree_tensor_ids
from mvc.remote.transport import Transport
from mvc.repo import Repo
from mvc.store.codec_header import CodecError
from mvc.store.objfile import MAX_DELTA_DEPTH, parse_header

INCOMING_DIR = "incoming"
_DAMAGED_HINT = "the remote copy is damaged; push it again from a repository that has it intact"

Mapper = Callable[..., Iterable]


def _bad(kind: str, oid: str, url: str, reason: str) -> CorruptObjectError:
    return CorruptObjectError(
        f"{kind} {oid} received from {url} does not verify: {reason}", hint=_DAMAGED_HINT
    )


def parse_git_object(sha: str, data: bytes, url: str) -> ShaFile:
    """A loose git object, checked against the sha it was asked for."""
    try:
        obj = ShaFile.from_file(io.BytesIO(data))
        actual = obj.id.decode()
    except Exception as exc:  # zlib, header and format errors all mean the same here
        raise _bad("git object", sha, url, exc.__class__.__name__) from None
    if actual != sha:
        raise _bad("git object", sha, url, f"its content hashes to {actual}")
    return obj


def receive_git(
    repo: Repo,
    transport: Transport,
    wants: Iterable[str],
    pool: ThreadPoolExecutor,
    progress: Tally,
    depth: int | None = None,
    shallow: set[str] | None = None,
) -> dict[str, ShaFile]:
    """Fetch everything reachable from `wants` that is not local; return the trees/commits.

    The returned objects are not written yet (see `write_graph`); blobs already are. With
    `depth`, history stops `depth` commits below each wanted commit; the commits whose
    parents were left out are added to `shallow` (git's `.git/shallow`).
    """
    store = repo.git.object_store
    held: dict[str, ShaFile] = {}
    frontier = [w for w in dict.fromkeys(wants) if w.encode() not in store]
    seen = set(frontier)
    generation = dict.fromkeys(frontier, 1)  # how far below a wanted commit (depth only)

    def one(sha: str) -> ShaFile:
        data = transport.get(git_object_key(sha))
        obj = parse_git_object(sha, data, transport.url)
        if isinstance(obj, Blob):
            store.add_object(obj)
        progress.add(len(data))
        return obj

    while frontier:
        following: list[str] = []
        for obj in pool.map(one, frontier):
            if isinstance(obj, Blob):
                continue
            sha = obj.id.decode()
            held[sha] = obj
            following_of = children(obj)
            if depth is not None and isinstance(obj, Commit):
                below = generation.get(sha, 1)
                if below >= depth and obj.parents:
                    following_of = [obj.tree.decode()]
                    if shallow is not None:
                        shallow.add(sha)
                else:
                    for parent in obj.parents:
                        key = parent.decode()
                        generation[key] = min(generation.get(key, below + 1), below + 1)
            for child in following_of:
                if child not in seen and child.encode() not in store:
                    seen.add(child)
                    following.append(child)
        frontier = following
    return held


def write_graph(repo: Repo, held: dict[str, ShaFile]) -> None:
    """Write held trees and commits, every object after everything it points to."""
    store = repo.git.object_store
    written: set[str] = set()
    for root in held:
        stack = [(root, False)]
        while stack:
            sha, expanded = stack.pop()
            if sha in written or sha not in held:
                continue
            if expanded:
                store.add_object(held[sha])
                written.add(sha)
                continue
            stack.append((sha, True))
            stack.extend((c, False) for c in children(held[sha]) if c in held)


def tensor_ids_of(
    repo: Repo, held: dict[str, ShaFile], commits: Iterable[str] | None = None
) -> set[str]:
    """Tensor objects referenced by blobs under the trees of `commits`.

    Without `commits`: under every received (not yet written) commit, walking received
    trees only, since a tree already present locally has its objects locally in a complete
    repository. With `commits` (a lazy fetch's branch tips): their whole trees, received
    or local, since a lazy repository lacks objects under local trees too.
    """
    whole = commits is not None
    roots = commits if whole else [sha for sha, obj in held.items() if isinstance(obj, Commit)]

    def get(sha: str) -> ShaFile | None:
        if sha in held:
            return held[sha]
        return repo.git[sha.encode()] if whole else None

    trees = [commit.tree.decode() for sha in roots if isinstance(commit := get(sha), Commit)]
    return tree_tensor_ids(repo, trees, get)


def receive_tensors(
    repo: Repo,
    transport: Transport,
    ids: Iterable[str],
    pool: ThreadPoolExecutor,
    progress: Tally,
    on_stored: Callable[[str, memoryview], None] | None = None,
) -> None:
    """Fetch and verify the tensor objects in `ids` (and delta bases) not stored locally.

    `on_stored(oid, content)` is called with each object's decoded bytes once it is stored
    (a clone writes its checkout from them, see `direct_checkout`).

    Each object is decoded and checked once, in the pass that stores it. A delta whose
    base nobody is fetching yet has its base fetched first by the same worker (a chain at
    most MAX_DELTA_DEPTH deep in memory), then is stored against the bytes the base just
    decoded to. A delta whose base another worker is fetching waits (spilled to disk) in a
    list under that base, and that worker stores the waiting deltas next, the same way.

    Each object file is fsynced before its rename, but the folders' fsyncs are batched
    (``FolderSyncs``): each folder once, at the end, before the caller writes anything that
    points at the objects; a delta's base is made durable before the delta appears.
    """
    store = repo.store
    incoming = repo.mvc_dir / INCOMING_DIR
    todo = [oid for oid in dict.fromkeys(ids) if not store.has(oid)]
    started: set[str] = set()  # objects a worker has taken on
    children: dict[str, list[str]] = {}  # base -> spilled deltas waiting for it
    lock = threading.Lock()
    folder_syncs = FolderSyncs()

    def keep(oid: str, data: bytes, known: dict[str, memoryview] | None = None) -> Stored:
        try:
            decoded = store.write_raw(oid, data, known, folder_syncs)
        except (CorruptObjectError, FormatError) as err:
            (incoming / oid).unlink(missing_ok=True)
            raise _bad("object", oid, transport.url, err.message) from None
        (incoming / oid).unlink(missing_ok=True)
        if on_stored is not None and decoded is not None:
            on_stored(oid, decoded)
        with lock:
            ready = children.pop(oid, [])
        for child in ready:  # bounded: a chain is at most MAX_DELTA_DEPTH deep
            spilled = incoming / child
            if spilled.is_file():
                keep(child, spilled.read_bytes(), {oid: decoded} if decoded else None)
        return Stored(None, decoded)

    def one(oid: str, above: int = 0) -> Stored:
        """Fetch and keep `oid` (the base of `above` deltas fetched by this worker), unless
        a worker has it already or it has to wait."""
        if above > MAX_DELTA_DEPTH:
            raise _bad("object", oid, transport.url, "its delta chain is too deep")
        with lock:
            if oid in started:
                return Stored(None, None)
            started.add(oid)
        spilled = incoming / oid
        if spilled.is_file():
            data = spilled.read_bytes()
        else:
            data = transport.get(tensor_object_key(oid))
            progress.add(len(data))
        try:
            base = parse_header(data).base
        except (CodecError, FormatError) as exc:
            raise _bad("object", oid, transport.url, str(exc)) from None
        if base is None or store.has(base):
            return keep(oid, data)
        first = one(base, above + 1)  # stored here, unless another worker has it or it has to wait
        if store.has(base):
            return keep(oid, data, None if first.decoded is None else {base: first.decoded})
        if not spilled.is_file():
            _write_spill(incoming, oid, data)
        with lock:
            if not store.has(base):
                children.setdefault(base, []).append(oid)
                return Stored(base, None)
        return keep(oid, data)  # the base was stored while this delta was being spilled

    try:
        waiting = {
            oid: done.waits for oid, done in zip(todo, pool.map(one, todo), strict=True) if done.waits
        }
        # Every waiting delta was stored by the worker that stored its base, unless the
        # base never came: a resumed fetch's leftovers, or a remote whose deltas loop.
        waiting = {oid: base for oid, base in waiting.items() if not store.has(oid)}
        while waiting:
            ready = [oid for oid, base in waiting.items() if store.has(base)]
            if not ready:
                oid, base = next(iter(waiting.items()))
                raise _bad("object", oid, transport.url, f"its delta base {base} never arrived")
            list(pool.map(lambda oid: keep(oid, (incoming / oid).read_bytes()), ready))
            waiting = {oid: base for oid, base in waiting.items() if not store.has(oid)}
    finally:
        folder_syncs.flush(pool.map)
    if incoming.is_dir() and not any(incoming.iterdir()):
        incoming.rmdir()


class Stored(NamedTuple):
    """What `receive_tensors` did with one object: the base it waits for (spilled), or
    None; its decoded bytes when it was just stored."""

    waits: str | None
    decoded: memoryview | None


def _write_spill(folder: Path, oid: str, data: bytes) -> None:
    """Park a downloaded delta until its base is stored (complete files only, via rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / oid, data, prefix=TEMP_PREFIX)
