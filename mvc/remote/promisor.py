"""On-demand objects for a lazy clone: the promisor remote behind the store's reads.

`attach` hands the repository's `ObjectStore` a `RemotePromisor`; from then on any read of
a missing tensor object (checkout, merge inputs and base, verify, unmerge, extract, diff,
lock) fetches it first, in parallel batches when the reader knows what it needs
(`ObjectStore.prefetch`), each object verified as a fetch verifies it. When the remote
cannot be reached, or with `--offline`, the read fails with one line naming what is
missing: the object, the model file and the commit that needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from mvc.errors import CorruptObjectError, MvcError, RemoteError
from mvc.progress import BarProgress, Tally
from mvc.remote.config import get_remote
from mvc.remote.receive import receive_tensors
from mvc.remote.transport import Transport
from mvc.remote.url import open_transport
from mvc.repo import Manifest, Repo
from mvc.repo.promised import promisor_remote
from mvc.repo.worktree import is_model_path

WORKERS = 8
_THREAD_PREFIX = "mvc-promisor"


class MissingObjectsError(RemoteError):
    """Objects a command needs are not here and cannot be fetched now."""


class RemotePromisor:
    """Fetches missing tensor objects from one remote; counts what it fetched."""

    def __init__(
        self, repo: Repo, remote: str, *, offline: bool = False, quiet: bool = False
    ) -> None:
        self.repo = repo
        self.remote = remote
        self.offline = offline
        self.quiet = quiet
        self.objects = 0
        self.bytes = 0
        self._transport: Transport | None = None
        self._lock = threading.Lock()  # one batch at a time; each batch is parallel

    def transport(self) -> Transport:
        if self._transport is None:
            config = get_remote(self.repo, self.remote)
            self._transport = open_transport(config.url, config.endpoint)
        return self._transport

    def fetch(self, oids: Sequence[str]) -> None:
        if threading.current_thread().name.startswith(_THREAD_PREFIX):
            return  # a fetch's own verification: what it needs is stored bases first
        with self._lock:
            store = self.repo.store
            todo = [oid for oid in dict.fromkeys(oids) if not store.has(oid)]
            if not todo:
                return
            if self.offline:
                raise missing_error(self.repo, todo, f"--offline: not fetching from {self.remote}")
            bar = BarProgress(enabled=False if self.quiet else None)
            progress = Tally(bar, "fetching missing objects", len(todo))
            try:
                with (
                    ThreadPoolExecutor(WORKERS, thread_name_prefix=_THREAD_PREFIX) as pool,
                    progress,
                ):
                    receive_tensors(self.repo, self.transport(), todo, pool, progress)
            except CorruptObjectError:
                raise
            except RemoteError as err:
                raise missing_error(self.repo, todo, f"{self.remote}: {err.message}") from None
            finally:
                self.objects += progress.objects
                self.bytes += progress.bytes

    def summary(self) -> str | None:
        """One line for the end of a command, when it fetched anything."""
        if not self.objects:
            return None
        return (
            f"fetched {self.objects} missing object(s), {self.bytes} bytes "
            f"({self.bytes / 2**20:.1f} MiB) from {self.remote}"
        )


def attach(repo: Repo, *, offline: bool = False, quiet: bool = False) -> RemotePromisor | None:
    """Give the repository's store its promisor remote (a lazy clone's), if it has one."""
    remote = promisor_remote(repo)
    if remote is None:
        return None
    promisor = RemotePromisor(repo, remote, offline=offline, quiet=quiet)
    repo.store.promisor = promisor
    return promisor


def missing_error(repo: Repo, oids: Sequence[str], reason: str) -> MissingObjectsError:
    """One line naming the missing objects: how many, and the first one's file and commit."""
    where = _needed_by(repo, set(oids))
    first = where[2] if where else oids[0]
    place = f" of {where[1]} in commit {where[0][:12]}" if where else " (a delta base)"
    more = f" and {len(oids) - 1} more" if len(oids) > 1 else ""
    return MissingObjectsError(
        f"object {first}{place}{more} not here ({reason})",
        hint="run it again once the remote is reachable, or first `mvc fetch --all-objects`",
    )


def _needed_by(repo: Repo, oids: set[str]) -> tuple[str, str, str] | None:
    """(commit, path, object) of the newest commit with a model file that needs one."""
    seen: set[bytes] = set()
    for sha in repo.reachable_commits():
        for path, (blob, _) in repo.tree_files(sha.decode()).items():
            if blob in seen or not is_model_path(path):
                continue
            seen.add(blob)
            try:
                ids = Manifest.from_bytes(repo.read_blob(blob), path).object_ids()
            except MvcError:
                continue
            hit = next((oid for oid in ids if oid in oids), None)
            if hit is not None:
                return sha.decode(), path, hit
    return None
