"""A push's objects: what the remote lacks, sent as stored, in one pipelined stream.

The remote lists its objects on the pool while the local history is walked; tensor
objects, blobs and trees then go out together, each delta's base joining the stream when
the delta is read for sending (no pass over headers first), and commits go last, so a
remote commit always has its tree and files. The caller moves the ref after that.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from dulwich.objects import Commit

from mvc.errors import RemoteError
from mvc.progress import Progress, Tally
from mvc.remote.layout import git_object_key, tensor_object_key
from mvc.remote.negotiate import (
    git_objects_missing,
    referenced_tensor_ids,
    remote_git_ids,
    remote_tensor_ids,
)
from mvc.remote.refs import remote_branches
from mvc.remote.transport import Transport
from mvc.repo import Repo
from mvc.store.objfile import parse_header

if TYPE_CHECKING:
    from mvc.remote.sync import TransferReport


def send_objects(
    repo: Repo,
    transport: Transport,
    local: str,
    pool: ThreadPoolExecutor,
    report: TransferReport,
    bar: Progress,
    paranoid: bool,
) -> None:
    """Send what `local` needs and the remote lacks, filling `report`'s counts (not refs)."""
    haves = set(remote_branches(transport, pool).values())
    git_listing = pool.submit(remote_git_ids, transport)
    tensor_listing = pool.submit(remote_tensor_ids, transport)
    git_ids = git_objects_missing(repo, [local], haves)
    commits = [sha for sha in git_ids if isinstance(repo.git[sha.encode()], Commit)]
    referenced = referenced_tensor_ids(repo, commits, set(git_ids))
    on_remote = git_listing.result()
    git_send = [sha for sha in git_ids if sha not in on_remote]
    tensors_there = tensor_listing.result()
    tensor_send = set(referenced - tensors_there)  # grows by the bases the remote lacks
    report.skipped = (len(git_ids) - len(git_send)) + len(referenced & tensors_there)

    def send_tensor(oid: str) -> str | None:
        """Send `oid` as stored; its delta base, if the remote lacks it and nobody sends it yet."""
        data = repo.store.read_raw(oid)
        if paranoid:
            repo.store.verify(oid, data)
        else:
            repo.store.check_intact(oid, data)
        transport.put(tensor_object_key(oid), data)
        progress.add(len(data))
        base = parse_header(data).base
        return base if base is not None and base not in tensors_there else None

    def send_git(sha: str) -> None:
        obj = repo.git.object_store[sha.encode()]
        if obj.id.decode() != sha:
            raise RemoteError(
                f"local git object {sha} is damaged; not pushing it", hint="run `mvc fsck`"
            )
        data = obj.as_legacy_object()
        transport.put(git_object_key(sha), data)
        progress.add(len(data))

    is_commit = set(commits)
    total = len(git_send) + len(tensor_send)
    with Tally(bar, "pushing objects", total) as progress:

        def more(base: str | None) -> list[Future]:
            if base is None or base in tensor_send:
                return []
            tensor_send.add(base)
            return [pool.submit(send_tensor, base)]

        others = [pool.submit(send_tensor, oid) for oid in sorted(tensor_send)]
        others += [pool.submit(send_git, sha) for sha in git_send if sha not in is_commit]
        _drain(others, more)
        _drain([pool.submit(send_git, sha) for sha in git_send if sha in is_commit])
    report.git_objects = len(git_send)
    report.tensor_objects = len(tensor_send)
    report.bytes = progress.bytes


def _drain(futures: list[Future], more: Callable[[Any], list[Future]] | None = None) -> None:
    """Wait for `futures` as they finish, adding the follow-up futures `more(result)` of
    each; raise the first failure, cancelling what has not started."""
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                if more is not None:
                    pending.update(more(result))
    except BaseException:
        for future in pending:
            future.cancel()
        raise
